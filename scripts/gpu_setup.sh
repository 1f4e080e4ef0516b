# `setup` for the scripts run on the device machine (scripts/gpu_convert.sh; the lease scripts under
# results/gpu_convert/ that source it): install the carried wheels (WHEELS) into /tmp/site, reassemble the teacher
# (TEACHER) from the carried parts .carry/p1/gguf.part1, .carry/p2/gguf.part2, ... and check it against their
# .carry/*/gguf.sha256, check the corpus (CORPUS), and unpack a carried Triton cache (TRITON_CACHE), then print the
# versions and the GPU. Source it; it runs nothing itself.

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
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv; fi
}
