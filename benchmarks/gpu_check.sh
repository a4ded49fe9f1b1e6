#!/usr/bin/env bash
# One-shot GPU check, about 6-8 minutes on one GPU:
#   - the CUDA-only tests
#   - bench_train.py: ViT-B/16 at 256x128, batch 64, with bf16 and with fp16 + GradScaler
#   - a one-GPU torchrun (NCCL) training run (bf16) with evaluation on generated demo data
#   - CUDA evaluation and re-ranking at MSMT17 size against their floors (bench_eval.py)
#   - the torchrun run's state resumed into fp16 + GradScaler, by one process and by torchrun
#   - the same first iterations in fp32, bf16 and fp16: their losses compared
# and one Markdown table naming the device (paste it into benchmarks/README.md).
#
#   bash benchmarks/gpu_check.sh              # needs CUDA: fails at once without it
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU at toy sizes
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh --steps tests,eval
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
