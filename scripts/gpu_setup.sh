# `setup` for the scripts run on the device machine (scripts/gpu_convert.sh; the lease scripts under
# results/gpu_convert/ that source it): join the files carried in parts (`join_parts`: each file scripts/gpu_carry.py
# split, .carry/p*/NAME.part1, NAME.part2, ... checked against the `sha256sum --check` line of their NAME.sha256 and
# moved to the path it names; the teacher (TEACHER) from .carry/p*/gguf.part1, gguf.part2, ... checked against their
# .carry/*/gguf.sha256), install the carried wheels (WHEELS) into /tmp/site when they are not all there yet, check the
# corpus (CORPUS), and unpack a carried Triton cache (TRITON_CACHE), then print the versions and the GPU. Source it
# after setting RUNS (and DEADLINE and START, for `timed_step`); it runs nothing itself.
# The inputs' defaults, each replaced by the environment (scripts/gpu_convert.sh documents them):
: "${TEACHER:=$RUNS/SmolLM2-135M-Instruct.Q4_1.gguf}" "${CORPUS:=.carry/c/corpus.jsonl.xz}" "${WHEELS:=.whl}"
# Triton's cache: the one carried for this lease, whole or in parts (scripts/gpu_carry.py writes it from git's history,
# which keeps it out of the tree that every call copies)
: "${TRITON_CACHE:=.carry/triton_cache.txz}"
# A crash writes its traceback (PYTHONFAULTHANDLER). The engine's signal trace (HYPENET_SIGNAL_TRACE, docs/TRAINING.md)
# is off unless set: it was on from the fifty-first lease to the fifty-fifth, whose deadline stop it crashed (a
# segmentation fault while it wrote the other threads' stacks); the lost stops it was for are explained, and mended
# by the engine's watch (results/gpu_convert/stop_resume/).
export PYTHONFAULTHANDLER=${PYTHONFAULTHANDLER-1}

timed_step() {  # timed_step LOGS NAME COMMAND...: COMMAND with what is left of DEADLINE (seconds after START) less
    # 20 s for packing, stopped by SIGINT then (a conversion checkpoints and stops), its output added to LOGS/NAME.log;
    # returns 1 without running it when 30 s or less would be left
    local logs=$1 name=$2 left; shift 2
    left=$((DEADLINE - (SECONDS - START) - 20))
    [ "$left" -gt 30 ] || { echo "deadline: stopping before $name; run the same command again"; return 1; }
    echo "[$((SECONDS - START))s] $name ($left s left)"
    # appended: a step resumed by a later call keeps the earlier calls' output (how a stop went) above its own
    echo "=== $(date -u +%FT%TZ) $name, $left s left" >>"$logs/$name.log"
    local code=0
    timeout --signal=INT --kill-after=10 "$left" "$@" >>"$logs/$name.log" 2>&1 || code=$?
    # in the log too: whether a stopped conversion ended by itself or was killed
    if [ "$code" -eq 0 ]; then tail -2 "$logs/$name.log"
    else tail -1 "$logs/$name.log"; echo "  $name stopped: exit $code$(stop_reason "$code" 10)" | tee -a "$logs/$name.log"
    fi
}

stop_reason() {  # stop_reason CODE GRACE: what GNU timeout's exit code says of a step it stopped (empty for others)
    case $1 in
        124) echo " (the deadline's SIGINT; it ended within the $2 s after)" ;;
        137) echo " (killed: still running $2 s after the deadline's SIGINT)" ;;
    esac
}

parts_of() {  # parts_of NAME: .carry/p*/NAME.part1, NAME.part2, ... one per line, in order, each found in any p folder
    local k=1 part
    while part=$(ls .carry/p*/"$1.part$k" 2>/dev/null | head -1) && [ -n "$part" ]; do echo "$part"; k=$((k + 1)); done
}

assemble() {  # assemble DEST SHA256 SUMS WHAT PART...: the parts joined into DEST if they match SHA256 (read from
    # SUMS); WHAT names DEST in the error otherwise
    local dest=$1 hex=$2 sums=$3 what=$4; shift 4
    mkdir -p "$(dirname "$dest")" && cat "$@" >"$dest.tmp"
    echo "$hex  $dest.tmp" | sha256sum --check --quiet - || { rm -f "$dest.tmp"
        echo "$what reassembled from $* does not match $sums: a part missing?"; return 1; }
    mv "$dest.tmp" "$dest"
}

join_parts() {  # join_parts: each file carried in parts that is not there yet, part K found in any .carry/p*
    local sums name hex dest parts
    for sums in .carry/p*/*.sha256; do  # a split file: NAME.sha256 holds "<sha256>  <where it belongs>"
        [ -f "$sums" ] && [ "${sums##*/}" != gguf.sha256 ] || continue
        name=${sums##*/}
        name=${name%.sha256}
        read -r hex dest <"$sums"
        [ -n "$dest" ] || { echo "$sums names no file to join its parts into"; return 1; }
        [ ! -e "$dest" ] || continue
        mapfile -t parts < <(parts_of "$name")
        [ "${#parts[@]}" -gt 0 ] || { echo "no parts .carry/p*/$name.part1, ... for $sums"; return 1; }
        assemble "$dest" "$hex" "$sums" "$dest" "${parts[@]}" || return 1
    done
    if [ "$TEACHER" != embedded ] && [ ! -e "$TEACHER" ]; then  # a .gguf file or a checkpoint folder (embedded: none)
        local teacher_sums=(.carry/*/gguf.sha256)
        mapfile -t parts < <(parts_of gguf)
        [ "${#parts[@]}" -gt 0 ] && [ -f "${teacher_sums[0]}" ] || {
            echo "no teacher at $TEACHER, and no parts .carry/p1/gguf.part1, ... with a .carry/*/gguf.sha256"
            return 1; }
        assemble "$TEACHER" "$(cat "${teacher_sums[0]}")" "${teacher_sums[0]}" "the teacher" "${parts[@]}"
    fi
}
export -f assemble parts_of join_parts  # for setup in a child bash that gets only setup (scripts/gpu_convert.sh's `step`)

setup() {
    join_parts || return 1
    local wheels  # the wheels' names, as /tmp/site/.hypenet_wheels names those installed last
    wheels=$(cd "$WHEELS" 2>/dev/null && ls -- *.whl 2>/dev/null)
    if [ -n "$wheels" ] && [ "$wheels" != "$(cat /tmp/site/.hypenet_wheels 2>/dev/null)" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl && echo "$wheels" >/tmp/site/.hypenet_wheels
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
    # (~14 s), for the next lease to carry back in (TRITON_CACHE): they save it minutes; none when over 16 MB. Written
    # under another name and renamed when whole: a call's timeout that cuts the packing (the fifty-seventh lease's
    # last call) leaves no half-written archive to be taken for a cache.
    [ -d "$HOME/.triton/cache" ] || return 0
    local part="$1/.triton_cache.txz.part"
    XZ_OPT="-6 -T0" tar cJf "$part" -C "$HOME/.triton/cache" . || { rm -f "$part"; return 1; }
    if [ "$(stat -c %s "$part")" -lt 16000000 ]; then mv -f "$part" "$1/triton_cache.txz"; else rm -f "$part"; fi
}
