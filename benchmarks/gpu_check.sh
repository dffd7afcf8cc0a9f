#!/usr/bin/env bash
# The one prepared GPU check: run from the repository root on a machine with a CUDA device,
#     bash benchmarks/gpu_check.sh
# 1. a full default fine-tune on CUDA (bf16 autocast, channels-last, as `skulens train` does on a GPU);
# 2. `export --preset fast` (its distillation on the GPU), then the deployment table with the PyTorch variants
#    on the GPU (torch.compile with CUDA graphs among them: the torch-compile row), and ONNX Runtime on its CUDA
#    (and, when the installed onnxruntime-gpu has it, TensorRT) execution provider: `skulens bench --device cuda
#    --fast`;
# 3. the product detector trained on CUDA for a few minutes (`skulens detect train --device cuda`);
# 4. with 2+ GPUs: DistributedDataParallel over NCCL, the classifier and the detector, one GPU per process;
# each section appends to benchmarks/RESULTS.md or prints its result. Nothing else in skulens needs a GPU;
# on a CPU-only machine this script stops with a message. Budget: about 12 minutes on one H100-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
python -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count())"
python -c "import onnxruntime as o; print('onnxruntime providers:', o.get_available_providers())" || true
out="runs/gpu-$(date +%Y%m%d-%H%M%S)"
python benchmarks/train_grocery.py --device cuda --out "$out/train"
# the fast preset distils on the GPU (the training engine's device), then the bench measures its int8 file on the CPU
python -m skulens.cli export -m "$out/train/bundle" --preset fast --out "$out/fast" -q || echo "fast preset: check failed (files kept)"
python benchmarks/deploy_bench.py --bundle "$out/train/bundle" --out "$out/deploy" --device cuda --fast "$out/fast" \
  --variants baseline,torch-fp32,torch-bf16,torch-compile,onnx-fp32,onnx-int8
python -m skulens.cli detect train -o "$out/detector" --device cuda --max-minutes 4 -q
python -c "import json, sys; c = json.load(open(sys.argv[1])); print('detector on CUDA:', c['training'].get('steps_run'), 'steps,', c['training'].get('holdout'))" "$out/detector/detector.json"
if [ "$gpus" -ge 2 ]; then
  torchrun --standalone --nproc_per_node 2 -m skulens.cli train --out "$out/ddp" --epochs 2 --no-baseline
  torchrun --standalone --nproc_per_node 2 -m skulens.cli detect train -o "$out/ddp-detector" --max-minutes 2 -q
  echo "DDP over NCCL: classifier and detector finished with 2 processes"
else
  echo "one GPU: DistributedDataParallel over NCCL needs 2+ GPUs (skipped; gloo is tested on the CPU)"
fi
