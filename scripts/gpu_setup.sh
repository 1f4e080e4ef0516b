# `setup` for the scripts run on the device machine (scripts/gpu_convert.sh; the lease scripts under
# results/gpu_convert/ that source it): install the carried wheels (WHEELS) into /tmp/site, reassemble the teacher
# (TEACHER) from the carried parts .carry/p1/gguf.part1, .carry/p2/gguf.part2, ... and check it against their
# .carry/*/gguf.sha256, check the corpus (CORPUS), and unpack a carried Triton cache (TRITON_CACHE), then print the
# versions and the GPU. Source it after setting RUNS (and DEADLINE and START, for `timed_step`); it runs nothing
# itself.
# The inputs' defaults, each replaced by the environment (scripts/gpu_convert.sh documents them):
: "${TEACHER:=$RUNS/SmolLM2-135M-Instruct.Q4_1.gguf}" "${CORPUS:=.carry/c/corpus.jsonl.xz}" "${WHEELS:=.whl}"
# Triton's cache: one carried for this lease, else the one committed (a fresh session's checkout has no .carry/)
[ -n "${TRITON_CACHE:-}" ] || { TRITON_CACHE=.carry/triton_cache.txz
    [ -f "$TRITON_CACHE" ] || TRITON_CACHE=results/gpu_convert/triton_cache.txz; }

timed_step() {  # timed_step LOGS NAME COMMAND...: COMMAND with what is left of DEADLINE (seconds after START) less
    # 20 s for packing, stopped by SIGINT then (a conversion checkpoints and stops), its output in LOGS/NAME.log;
    # returns 1 without running it when 30 s or less would be left
    local logs=$1 name=$2 left; shift 2
    left=$((DEADLINE - (SECONDS - START) - 20))
    [ "$left" -gt 30 ] || { echo "deadline: stopping before $name; run the same command again"; return 1; }
    echo "[$((SECONDS - START))s] $name ($left s left)"
    timeout --signal=INT --kill-after=10 "$left" "$@" >"$logs/$name.log" 2>&1 || echo "  $name stopped: exit $?"
    tail -2 "$logs/$name.log"
}

setup() {
    if [ -d "$WHEELS" ] && [ ! -d /tmp/site/fla ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    fi
    if [ ! -e "$TEACHER" ]; then  # a .gguf file or a checkpoint folder
        local parts=() sums=(.carry/*/gguf.sha256) n=1
        while [ -f ".carry/p$n/gguf.part$n" ]; do parts+=(".carry/p$n/gguf.part$n"); n=$((n + 1)); done
        [ "${#parts[@]}" -gt 0 ] && [ -f "${sums[0]}" ] \
            || { echo "no teacher at $TEACHER, and no parts .carry/p1/gguf.part1, ... with a .carry/*/gguf.sha256"; return 1; }
        cat "${parts[@]}" >"$TEACHER.tmp"
        echo "$(cat "${sums[0]}")  $TEACHER.tmp" | sha256sum --check --quiet - || { rm -f "$TEACHER.tmp"
            echo "the teacher reassembled from ${parts[*]} does not match ${sums[0]}: a part missing?"; return 1; }
        mv "$TEACHER.tmp" "$TEACHER"
    fi
    [ -f "$CORPUS" ] || { echo "no corpus at $CORPUS (python -m hypenet.data export corpus.jsonl.xz)"; return 1; }
    if [ -f "$TRITON_CACHE" ]; then  # kernels compiled by an earlier lease on the same image
        mkdir -p "$HOME/.triton/cache" && tar xf "$TRITON_CACHE" -C "$HOME/.triton/cache"
    fi
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    # the GPU's UUID: whether two leases ran on the same card (for the determinism leases)
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,uuid,memory.used,memory.total --format=csv; fi
}

pack_triton_cache() {  # pack_triton_cache DIR: Triton's compiled kernels and autotuning results into DIR/triton_cache.txz
    # (~14 s), for the next lease to carry back in (TRITON_CACHE): they save it minutes; none when over 16 MB
    [ -d "$HOME/.triton/cache" ] || return 0
    XZ_OPT="-6 -T0" tar cJf "$1/triton_cache.txz" -C "$HOME/.triton/cache" .
    [ "$(stat -c %s "$1/triton_cache.txz")" -lt 16000000 ] || rm -f "$1/triton_cache.txz"
}
