#!/usr/bin/env bash
# The GPU paths that no CPU machine exercises (issue 29, "Ready for a GPU"): each check is
# one imgxfer command on `cuda` with a tiny budget, and prints one line, "ok" or "FAIL"
# with its seconds and the last line it printed. About 5-8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, its .venv active
#   IMGXFER=path/to/imgxfer bash benchmarks/gpu_check.sh
#
# On a machine without CUDA it says so and exits 0 (nothing to check). With two or more
# GPUs it also runs two processes under torchrun (NCCL). Run folders go to a temporary
# folder that is removed at the end; exit status 1 when any check failed.
set -uo pipefail

IMGXFER=${IMGXFER:-imgxfer}
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; this script needs a GPU (nothing checked)."
    exit 0
fi
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FAILED=0
TINY=(--encoder-steps 40 --generator-steps 40 --adapter-steps 40
      --synthetic-per-class 20 --device cuda --out "$OUT")

check() {  # check NAME COMMAND...: one line per check
    local name=$1
    shift
    local start=$SECONDS log="$OUT/$name.log"
    if "$@" >"$log" 2>&1; then
        printf 'ok    %-28s %4ds\n' "$name" $((SECONDS - start))
    else
        FAILED=1
        printf 'FAIL  %-28s %4ds  %s\n' "$name" $((SECONDS - start)) \
            "$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-120)"
    fi
}

echo "gpu_check: $GPUS CUDA device(s): $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"
check default-run          "$IMGXFER" run "${TINY[@]}"
check translate-0-shots    "$IMGXFER" run --source mnist --target mnist-m --shots 0 \
                               --synthesis translate "${TINY[@]}"
check text-synthesis       "$IMGXFER" run --synthesis text "${TINY[@]}"
check bf16                 "$IMGXFER" run --mixed-precision bf16 "${TINY[@]}"
check segment              "$IMGXFER" run --task segment --generator gan --compare \
                               source-only,self-training "${TINY[@]}"
check detect               "$IMGXFER" run --task detect --compare source-only,finetune \
                               --shots 2 "${TINY[@]}"
if "$PYTHON" -c "import imgxfer_diffusers" 2>/dev/null; then
    check diffusion        "$IMGXFER" run --generator diffusion --synthesis text "${TINY[@]}"
else
    echo "skip  diffusion                    (imgxfer-diffusers is not installed)"
fi
if [ "$GPUS" -ge 2 ]; then
    check torchrun-2-gpus  "$PYTHON" -m torch.distributed.run --nproc-per-node 2 \
                               -m imgxfer run --generator none "${TINY[@]}"
else
    echo "skip  torchrun-2-gpus              (one GPU)"
fi
exit $FAILED
