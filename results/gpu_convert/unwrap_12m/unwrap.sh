# One device call after the three carries: the manual-layers recipe (NoPE) with half the wrapped paragraphs of the
# training documents joined (data.unwrap_paragraphs=0.5), stage 2 at 12M tokens and stage 3 at 2M to fit the call, no logit-scaling
# search (a = 2000), then NIAH Single-1/2/3 at 4K/8K on held-out haystacks and perplexity to 8K.
set -u
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
R=runs/gpu_unwrap; C=.carry/c/corpus.jsonl.xz; T=$R/SmolLM2-135M-Instruct.Q4_1.gguf; H="python3 -m hypenet.cli"
START=$SECONDS; DEADLINE=${1:-370}
left() { echo $((DEADLINE - (SECONDS - START))); }
mkdir -p $R/logs $R/eval
[ -d /tmp/site/fla ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
cat .carry/p1/gguf.part1 .carry/p2/gguf.part2 .carry/p3/gguf.part3 > $T
echo "$(cat .carry/p3/gguf.sha256)  $T" | sha256sum -c --quiet || { echo "teacher parts do not match"; exit 1; }
mkdir -p ~/.triton/cache && tar xf .carry/triton_cache.txz -C ~/.triton/cache
pack() { tar czf $OUT/unwrap.tgz -C $R logs eval halo/report.md halo/report.json halo/report.png halo/config.yaml halo/model/halo_export.json 2>/dev/null; }
echo "[$SECONDS] convert"
timeout --signal=INT $(( $(left) - 70 )) $H convert --teacher $T --data $C --config configs/gpu-smollm2.yaml --out $R/halo \
  --set select.strategy=manual --set select.manual_layers=17,20,21,22,23,24,26 --set data.unwrap_paragraphs=0.5 \
  --set stage2.tokens=12M --set stage3.tokens=2M --set export.logit_scaling_candidates=2000 --set export.logit_scaling_extend=0 \
  > $R/logs/convert.log 2>&1
echo "[$SECONDS] convert rc $?"; grep -v "it/s\]\|step/s" $R/logs/convert.log | tail -4; pack
echo "[$SECONDS] eval"
timeout $(( $(left) - 5 )) $H eval $R/halo/model --label unwrap --out $R/eval/unwrap --niah-lengths 4096 \
  --niah-samples 2 --batch-size 16 --evals niah --haystack-heldout --ppl-source $C --haystack $C \
  --no-progress > $R/logs/eval.log 2>&1
echo "[$SECONDS] eval rc $?"; tail -3 $R/logs/eval.log; pack; ls -la $OUT
