#!/usr/bin/env bash
# The one prepared GPU check (issue 5, accelerators): a full default fine-tune on CUDA (bf16 autocast,
# channels-last, as `skulens train` does on a GPU) and the deployment table with the PyTorch variants on the
# GPU. Both append to benchmarks/RESULTS.md. Run from the repository root on a machine with a CUDA device:
#     bash benchmarks/gpu_check.sh
# Nothing else in skulens needs a GPU; on a CPU-only machine this script stops with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"
python -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
out="runs/gpu-$(date +%Y%m%d-%H%M%S)"
python benchmarks/train_grocery.py --device cuda --out "$out/train"
python benchmarks/deploy_bench.py --bundle "$out/train/bundle" --out "$out/deploy" --device cuda
