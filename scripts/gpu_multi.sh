#!/usr/bin/env bash
# HALO on several GPUs of one machine (issue 7), through `accelerate launch`, with random weights:
#   - stage 2 of the Qwen3-1.7B -> HypeNet-2B shape on the same global batches on one GPU (accumulating the micro
#     batch the GPUs below take, and half of it for the noise floor), on all GPUs with DDP and with FSDP2; `hypenet bench-scaling` compares the loss step by step
#     and the tokens/s per GPU (stage2/);
#   - stage 3 of the Qwen3-8B -> HypeNet-9B shape at 16K context with FSDP2 and gradient checkpointing: does it
#     fit, tokens/s and peak memory per GPU (stage3_9b/).
#
#   bash scripts/gpu_multi.sh [DEADLINE_SECONDS] [STEP ...]   (default 560; steps: single noise ddp fsdp compare
#                                                             stage3_9b, then the optional compiled ones:
#                                                             single_compiled ddp_compiled compare_compiled)
#
# Every finished step is recorded under $RUNS/done and skipped next time; a step that would start too close to the
# deadline is left for the next call (run the same command again). After each step the results so far (reports,
# plots, logs) are packed into $OUT/gpu_multi.tgz.
# Environment: WHEELS (default .whl: flash-linear-attention, fla-core, transformers >= 5.24 for the image),
# GPUS (default: all that torch sees), STEPS (default 50), BATCH (default 32: global sequences of 512 tokens).
# For tests/test_gpu_multi_script.py (the whole script on 2 CPU processes): SHAPE2, SHAPE3 (default hypenet-2b,
# hypenet-9b), BENCH_OPTIONS (added to every bench-train), DDP_LAUNCH and FSDP_LAUNCH (the launchers; accelerate
# starts several processes only on GPUs).
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0): the device README says why.
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:-560}
shift $(($# > 0 ? 1 : 0))
START=$SECONDS
RUNS=${RUNS:-runs/gpu_multi}
OUT=${OUT:-$RUNS/out}
WHEELS=${WHEELS:-.whl}
STEPS=${STEPS:-50}
BATCH=${BATCH:-32}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RUNS/done" "$RUNS/logs" "$OUT"
if [ -d "$WHEELS" ] && [ ! -d /tmp/site/fla ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
fi
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
[ "$GPUS" -ge 2 ] || { echo "gpu_multi.sh needs 2 or more GPUs; torch sees $GPUS"; exit 1; }

read -r -a BENCH <<<"${BENCH_OPTIONS:-}"
STAGE2=("${SHAPE2:-hypenet-2b}" --stages stage2 --steps "$STEPS" --warmup-steps 5 --set "stage2.batch_size=$BATCH"
        --set stage2.warmup_steps=10
        "${BENCH[@]}")
MICRO=$((BATCH / GPUS))  # one forward per GPU and step under DDP / FSDP
[ "$MICRO" -le 16 ] || MICRO=16
ACCELERATE="python3 -m accelerate.commands.launch --num_processes $GPUS --num_machines 1 --mixed_precision bf16 --dynamo_backend no"
read -r -a DDP <<<"${DDP_LAUNCH:-$ACCELERATE --multi_gpu}"
read -r -a FSDP <<<"${FSDP_LAUNCH:-$ACCELERATE --config_file configs/accelerate-fsdp.yaml}"

say() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*" | tee -a "$RUNS/logs/summary.log"; }

pack() {
    local keep=$RUNS/results
    rm -rf "$keep" && mkdir -p "$keep"
    for dir in "$RUNS"/stage2 "$RUNS"/stage3_9b; do
        [ -d "$dir" ] && cp -r "$dir" "$keep/"
    done
    tar czf "$OUT/gpu_multi.tgz" -C "$RUNS" results logs
}

# step NAME SECONDS_NEEDED COMMAND...: once, unless recorded as done; left for the next call near the deadline
step() {
    local name=$1 needs=$2; shift 2
    [ -f "$RUNS/done/$name" ] && return 0
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt "$needs" ]; then
        say "deadline: $name needs ~${needs}s, ${left}s left; run the same command again to continue"
        [ ${#FAILED[@]} -eq 0 ] || say "FAILED so far: ${FAILED[*]} (logs under $RUNS/logs)"
        pack; exit 0
    fi
    say "start $name (${left}s left)"
    local began=$SECONDS
    timeout --signal=INT --kill-after=20 "$left" "$@" >>"$RUNS/logs/$name.log" 2>&1
    local rc=$?
    tail -n 8 "$RUNS/logs/$name.log"
    if [ "$rc" -ne 0 ]; then
        say "FAILED $name (exit $rc) after $((SECONDS - began))s, log: $RUNS/logs/$name.log"
        FAILED+=("$name")
        pack; return 1
    fi
    echo $((SECONDS - began)) >"$RUNS/done/$name"
    say "done  $name in $((SECONDS - began))s"
    pack
}

S2=$RUNS/stage2
FAILED=()
want() { [ ${#STEPS_WANTED[@]} -eq 0 ] || [[ " ${STEPS_WANTED[*]} " == *" $1 "* ]]; }
STEPS_WANTED=("$@")
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv 2>/dev/null
nvidia-smi topo -m 2>/dev/null | head -n $((GPUS + 2))

# one GPU: the per-GPU micro batch of the runs below, accumulated; the noise run halves it (twice the accumulation)
want single && step single 150 python3 -m hypenet.bench.train "${STAGE2[@]}" \
    --set "stage2.micro_batch_size=$MICRO" --out "$S2/single"
want noise && step noise 150 python3 -m hypenet.bench.train "${STAGE2[@]}" \
    --set "stage2.micro_batch_size=$((MICRO / 2))" --out "$S2/single_half_micro"
want ddp && step ddp 120 "${DDP[@]}" -m hypenet.bench.train "${STAGE2[@]}" \
    --set "stage2.micro_batch_size=$MICRO" --out "$S2/ddp"
want fsdp && step fsdp 120 "${FSDP[@]}" -m hypenet.bench.train "${STAGE2[@]}" --set "stage2.micro_batch_size=$MICRO" --out "$S2/fsdp"
want compare && step compare 20 python3 -m hypenet.bench.scaling "single=$S2/single" \
    "single_half_micro=$S2/single_half_micro" "ddp=$S2/ddp" "fsdp=$S2/fsdp" --noise single_half_micro --out "$S2/compare"
want stage3_9b && step stage3_9b 200 "${FSDP[@]}" -m hypenet.bench.train "${SHAPE3:-hypenet-9b}" --stages stage3 \
    --steps 4 --warmup-steps 2 --set "stage3.batch_size=$GPUS" --set stage3.micro_batch_size=1 "${BENCH[@]}" \
    --out "$RUNS/stage3_9b"
# optional: the same with torch.compile (stage 2 runs fastest compiled on one GPU)
if [ ${#STEPS_WANTED[@]} -gt 0 ]; then
    want single_compiled && step single_compiled 150 python3 -m hypenet.bench.train "${STAGE2[@]}" \
        --set "stage2.micro_batch_size=$MICRO" --set compile=true --out "$S2/single_compiled"
    want ddp_compiled && step ddp_compiled 150 "${DDP[@]}" -m hypenet.bench.train "${STAGE2[@]}" \
        --set "stage2.micro_batch_size=$MICRO" --set compile=true --out "$S2/ddp_compiled"
    want fsdp_compiled && step fsdp_compiled 150 "${FSDP[@]}" -m hypenet.bench.train "${STAGE2[@]}" \
        --set "stage2.micro_batch_size=$MICRO" --set compile=true --out "$S2/fsdp_compiled"
    want compare_compiled && step compare_compiled 20 python3 -m hypenet.bench.scaling \
        "single_compiled=$S2/single_compiled" "ddp_compiled=$S2/ddp_compiled" "fsdp_compiled=$S2/fsdp_compiled" \
        --out "$S2/compare_compiled"
fi
pack
if [ ${#FAILED[@]} -gt 0 ]; then
    say "finished; FAILED: ${FAILED[*]} (logs under $RUNS/logs)"
    exit 1
fi
say "finished the steps asked for"
