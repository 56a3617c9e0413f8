#!/usr/bin/env bash
# GPU check of the MiniLM encoder on a GPU machine (sized for one H200): correctness against
# CPU float32 (min cosine >= 0.999 fp32, >= 0.99 bf16/fp16), then texts/s for
# fixed shapes (eager and torch.compile), TransformerEncoder end to end, and
# sentence-transformers fp16 on the same texts. Under 5 minutes; see
# bench/gpu_check.py for what each phase measures.
#
# 1. First, on any machine with the encoder extra (CPU, ~20 s): build the folder
#    the GPU machine needs (git-ignored, ~45 MiB: fp16 weights, tokenizer,
#    reference embeddings, text sets):
#
#        . .venv/bin/activate && python bench/gpu_prepare.py
#
# 2. On the GPU machine, in a copy of the repository that includes
#    bench/gpu_model/ (it needs only torch, transformers, sentence-transformers,
#    numpy and safetensors; allow about 330 s):
#
#        bash bench/gpu_check.sh
#
#    Results: $OUT/gpu_check.json and $OUT/gpu_check.log (the whole output, also
#    when the run is cut short; OUT defaults to bench/results).
#
# Here, as a smoke test (seconds, no compile): bash bench/gpu_check.sh --device cpu --quick
# Extra arguments go to gpu_check.py (e.g. --compile off, --compile-mode max-autotune-no-cudagraphs).
#
# Exit status: gpu_check.py's (0 all assertions held, 1 a check or a phase failed),
# 124 when `timeout` stopped it, 2 when the prepared folder or python is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ ! -f bench/gpu_model/reference.npz || ! -f bench/gpu_model/model.safetensors ]]; then
    echo "bench/gpu_model/ is missing: run 'python bench/gpu_prepare.py' on a machine with" \
        "the encoder extra, then copy bench/gpu_model/ here with the repository" >&2
    exit 2
fi

PY=python3
if [[ -x /opt/torch/.venv/bin/python3 ]]; then
    PY=/opt/torch/.venv/bin/python3  # the device image's python, the one with torch
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python  # here: the project's venv
fi
if ! "$PY" -c "import torch, transformers, numpy" 2>/dev/null; then
    echo "$PY cannot import torch/transformers/numpy" >&2
    exit 2
fi

OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

{
    echo "== $(date -u +%FT%TZ) $(uname -m) python: $PY"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --format=csv \
            --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total || true
    else
        echo "(no nvidia-smi)"
    fi
    # 280 s for the script (its own budget is 250 s, compile included), then SIGKILL 10 s on.
    timeout -k 10 280 "$PY" bench/gpu_check.py "$@"
    rc=$?
    echo "== gpu_check.py exit status $rc"
    exit "$rc"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
