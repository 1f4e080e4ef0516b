#!/usr/bin/env bash
# The fast-inference benchmark on one GPU (issue 5), in two device calls of < 10 minutes each, with carry [".whl"]
# (flash-linear-attention + fla-core, and transformers 5.24: the machine's image has 5.17):
#
#   bash scripts/gpu_bench.sh main     # batch 1, all timings of the targets in one run: HypeNet-2B (fast engine)
#                                      # vs Qwen3-1.7B through transformers' generate and through the fast engine,
#                                      # 32K-1M, prefill 128K/512K/1M; ~7-9 min
#   bash scripts/gpu_bench.sh batched  # the GPU check of the kernels and engine (python -m hypenet.fast.check),
#                                      # then batch 8 and 32 at 32K-128K; ~5-7 min
#   bash scripts/gpu_bench.sh prefill  # the GPU check, then prefill at 512K: HypeNet-2B (fast engine) vs Qwen3-1.7B
#                                      # through transformers, with decode at 128K; ~6-8 min
#   bash scripts/gpu_bench.sh decode   # batch-1 decode at 128K/512K/1M with --profile (kernels per step, busy time
#                                      # by kind): HypeNet-2B and Qwen3-1.7B in the engine, then both again with the
#                                      # Triton matrix-vector kernel (gemv/), then the GPU check; ~9 min
#                                      # (results/fast_bench/decode_profile/ ran an earlier version: inline/ and
#                                      # autotune/ instead of gemv/)
#   bash scripts/gpu_bench.sh gemv     # the Triton matrix-vector kernel: its GPU check, its launch settings timed
#                                      # against cuBLAS, then batch-1 decode with it (profiled) at 128K-1M, and
#                                      # with the norms / SiLU-gate / residual adds inside it (fused/); ~4 min
#   bash scripts/gpu_bench.sh fusion   # HypeNet-2B at 128K (profiled) with each part of that work inside the kernel
#                                      # apart: fusion_none/, fusion_residual/, ...; ~2 min each; FUSIONS="residual
#                                      # norm,residual" picks the variants (default: none residual swiglu,residual norm);
#                                      # a variant ending in :pdl runs with --pdl on, the others with --pdl off
#                                      # (fusion_residual_pdl/, ...; the other parts take the default, --pdl auto);
#                                      # CONTEXTS="128K,512K" and FUSION_SECONDS=200 for longer contexts
#
# Writes into $OUT (the device tool's folder) or runs/gpu_bench/<part>: bench.json, bench.md, bench_decode.png,
# log.txt, machine.txt (+ fast_check.json/.md, check_log.txt for `batched`): at most 8 files.
set -uo pipefail
part=${1:?usage: bash scripts/gpu_bench.sh main|batched|prefill|decode|gemv|fusion}
out=${OUT:-runs/gpu_bench/$part}
mkdir -p "$out"
if [ ! -d /tmp/site/fla ]; then  # once per machine (two parts may run side by side, one on each GPU)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels in .whl/ failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
# Package versions go into bench.json; this records the card as found (clocks are read, never set).
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  echo "command: bash scripts/gpu_bench.sh $part"; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# check_then_bench BENCH_OPTIONS...: the GPU check (3 min), then `hypenet bench` with these options; fails if either did
check_then_bench() {
  timeout 220 python3 -m hypenet.fast.check --out "$out" 2>&1 | tee "$out/check_log.txt"
  local check=${PIPESTATUS[0]}
  timeout 330 python3 -m hypenet.bench hypenet-2b qwen3-1.7b "$@" --batch-sizes "$batches" --decode-tokens 32 \
    --warmup-tokens 4 --time-budget-s 290 --out "$out" 2>&1 | tee "$out/log.txt"
  local bench=${PIPESTATUS[0]}
  return $(( check != 0 ? check : bench ))
}

# decode_bench SECONDS DIR MODELS... [OPTIONS]: batch-1 decode with --profile into $out/DIR
decode_bench() {
  local seconds=$1 dir=$out/$2; shift 2
  mkdir -p "$dir"
  timeout "$seconds" python3 -m hypenet.bench "$@" --prefill-contexts '' --teacher-prefill-contexts '' \
    --transformers-contexts '' --decode-tokens 32 --warmup-tokens 4 --profile \
    --time-budget-s $(( seconds - 15 )) --out "$dir" 2>&1 | tee "$dir/log.txt"
  return "${PIPESTATUS[0]}"
}

case $part in
  main)
    timeout 560 python3 -m hypenet.bench hypenet-2b qwen3-1.7b \
      --contexts 32K,128K,256K,512K,1M --prefill-contexts 128K,512K,1M --teacher-prefill-contexts 128K \
      --transformers-contexts 128K,512K --batch-sizes 1 --decode-tokens 32 --warmup-tokens 4 \
      --time-budget-s 520 --out "$out" 2>&1 | tee "$out/log.txt"
    ;;
  batched)
    batches=8,32 check_then_bench --contexts 32K,64K,128K --prefill-contexts '' --teacher-prefill-contexts '' \
      --transformers-contexts ''
    ;;
  prefill)
    batches=1 check_then_bench --contexts 128K,512K --prefill-contexts 512K --teacher-prefill-contexts '' \
      --transformers-contexts 512K
    ;;
  decode)
    # a time budget under the bench's setup allowance (90 s per model) skips the cases: a run that got 70 s in
    # the first lease of this part measured nothing
    decode_bench 160 . hypenet-2b qwen3-1.7b --contexts 128K,512K,1M; status=$?
    decode_bench 170 gemv hypenet-2b qwen3-1.7b --contexts 128K,512K --gemv triton || status=1
    timeout 220 python3 -m hypenet.fast.check --out "$out" 2>&1 | tee "$out/check_log.txt"
    (( status == 0 && PIPESTATUS[0] == 0 ))
    ;;
  gemv)
    # the matrix-vector kernel's GPU check (plain and with the norm / SiLU-gate / residual inside), its tuning table
    # against cuBLAS and the engine with it, then batch-1 decode with the plain kernel (profiled): HypeNet-2B and
    # Qwen3-1.7B in the engine at 128K/512K/1M, then HypeNet-2B with the norms, SiLU-gate and residual adds inside it
    # (fused/, the engine's default)
    timeout 170 python3 -m hypenet.fast.check --only gemv,engine,time_gemv --out "$out" 2>&1 | tee "$out/check_log.txt"
    status=${PIPESTATUS[0]}
    decode_bench 200 . hypenet-2b qwen3-1.7b --contexts 128K,512K,1M --gemv triton --gemv-fusion none || status=1
    decode_bench 120 fused hypenet-2b --contexts 128K,512K --gemv triton --gemv-fusion || status=1
    (( status == 0 ))
    ;;
  fusion)
    # which of the work around the matrix-vector products pays inside the kernel: HypeNet-2B at 128K, profiled,
    # without fusion, then with the residual adds, SiLU-gate + residual, and the norms inside it (one process each)
    status=0
    for variant in ${FUSIONS:-none residual swiglu,residual norm}; do
      parts=${variant%:pdl}; pdl=(--pdl off); suffix=
      if [ "$parts" != "$variant" ]; then pdl=(--pdl on); suffix=_pdl; fi
      decode_bench "${FUSION_SECONDS:-130}" "fusion_${parts//,/_}$suffix" hypenet-2b --contexts "${CONTEXTS:-128K}" \
        --gemv triton --gemv-fusion "$parts" "${pdl[@]}" || status=1
    done
    (( status == 0 ))
    ;;
  *) echo "unknown part '$part': main, batched, prefill, decode, gemv or fusion"; exit 2 ;;
esac
