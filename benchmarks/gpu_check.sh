#!/usr/bin/env bash
# The one prepared GPU check: run from the repository root on a machine with a CUDA device,
#     bash benchmarks/gpu_check.sh
# 1. the GPU-marked tests (pytest -m gpu: a fine-tune on CUDA, CPU/GPU agreement of a bundle and a detector);
# 2. a full default fine-tune on CUDA (bf16 autocast, channels-last, as `skulens train` does on a GPU);
# 3. the deployment table with the PyTorch variants on the GPU (torch.compile with CUDA graphs among them: the
#    torch-compile row), and ONNX Runtime on its CUDA (and, when the installed onnxruntime-gpu has it,
#    TensorRT) execution provider: `skulens bench --device cuda`;
# 4. the product detector trained on CUDA for a short budget (`skulens detect train --device cuda`), and
#    evaluated on the fridge sample when $SKULENS_FRIDGE (default ../shared/datasets/fridge-objects-sample) is there;
# 5. with 2+ GPUs: DistributedDataParallel over NCCL, the classifier and the detector, one GPU per process
#    (NCCL refuses two processes on one GPU, so a one-GPU machine skips this step and says so);
# 6. `export --preset fast`, its distillation on the GPU;
# 7. `train --preset best` (full fine-tune at 260 px) on CUDA, with the time it took.
# The data: --data's default, i.e. $SKULENS_DATA or ../shared/datasets/grocery-store.
# Each step runs under its own time limit (GPU_CHECK_LIMIT_<STEP> seconds) and a failed or stopped step does
# not stop the next one; the summary at the end lists each step's outcome and time. The whole script takes
# about 15-20 minutes on one H200 (measured 2026-12-04: tests 37 s, default fine-tune about 12 s an epoch with
# the default single-process data loading, 4 bench variants 2 min, detector 95 s; see RESULTS.md). Train and bench steps append to benchmarks/RESULTS.md.
# Nothing else in skulens needs a GPU; on a CPU-only machine this script stops with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')" || exit 1
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
$PY -c "import torch, torchvision, timm; print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(),
'| torch', torch.__version__, 'CUDA', torch.version.cuda, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, 'providers:', o.get_available_providers())" || true
out="${GPU_CHECK_OUT:-runs/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
summary=()
failed=0

# step NAME LIMIT_SECONDS COMMAND...: run it under `timeout`, log its outcome and wall time. With
# GPU_CHECK_BUDGET=S (seconds for the whole script), a step gets at most what is left of S, and is skipped
# when under 20 s are left: the script then ends inside a lease of known length.
budget=${GPU_CHECK_BUDGET:-0}
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - SECONDS))
    if [ "$left" -lt 20 ]; then summary+=("$name: skipped, ${left} s of the ${budget} s budget left"); return 1; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local took=$((SECONDS - t0)) verdict="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="STOPPED at its ${limit} s limit"
  elif [ "$rc" -ne 0 ]; then verdict="FAILED (exit $rc)"; fi
  echo "== $name: $verdict after ${took} s"
  summary+=("$name: $verdict, ${took} s")
  [ "$rc" -ne 0 ] && failed=1
  return "$rc"
}

step "gpu tests" "${GPU_CHECK_LIMIT_TESTS:-90}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_optim.py tests/test_gpu.py
step "full fine-tune (default recipe)" "${GPU_CHECK_LIMIT_TRAIN:-300}" \
  $PY benchmarks/train_grocery.py --device cuda --out "$out/train" -q
if [ -f "$out/train/bundle/card.json" ]; then
  step "deployment bench on CUDA" "${GPU_CHECK_LIMIT_BENCH:-240}" \
    $PY benchmarks/deploy_bench.py --bundle "$out/train/bundle" --out "$out/deploy" --device cuda \
    -q --repeats "${GPU_CHECK_REPEATS:-2}" --variants baseline,torch-fp32,torch-bf16,torch-compile,onnx-fp32
else
  summary+=("bench and export: skipped (no trained bundle)")
fi
step "detector training on CUDA" "${GPU_CHECK_LIMIT_DETECT:-110}" \
  $PY -m skulens.cli detect train -o "$out/detector" --device cuda --max-minutes "${GPU_CHECK_DETECT_MINUTES:-1.2}" -q &&
  $PY -c "import json, sys; c = json.load(open(sys.argv[1])); t = c['training']
print('detector on CUDA:', t.get('steps_run'), 'steps; hold-out:', t.get('holdout'))" "$out/detector/detector.json"
fridge=${SKULENS_FRIDGE:-../shared/datasets/fridge-objects-sample}
if [ -f "$out/detector/detector.json" ] && [ -d "$fridge" ]; then
  step "detector evaluated on the fridge sample" "${GPU_CHECK_LIMIT_DETECT_EVAL:-40}" \
    $PY -m skulens.cli detect evaluate "$out/detector" --data "$fridge" --out "$out/detector-fridge" --device cuda -q
fi
if [ "$gpus" -ge 2 ]; then
  step "DDP over NCCL, classifier" "${GPU_CHECK_LIMIT_DDP:-120}" \
    torchrun --standalone --nproc_per_node 2 -m skulens.cli train --out "$out/ddp" --epochs 2 --no-baseline
  step "DDP over NCCL, detector" "${GPU_CHECK_LIMIT_DDP:-120}" \
    torchrun --standalone --nproc_per_node 2 -m skulens.cli detect train -o "$out/ddp-detector" --max-minutes 1 -q
else
  summary+=("DDP over NCCL: skipped, one GPU (NCCL refuses two processes on one GPU; gloo is tested on the CPU)")
fi
if [ -f "$out/train/bundle/card.json" ]; then
  # the distillation runs on the GPU; its int8 file is checked (and timed, fast.md) by ONNX Runtime on the CPU
  step "export --preset fast (distilled on the GPU)" "${GPU_CHECK_LIMIT_FAST:-300}" \
    $PY -m skulens.cli export -m "$out/train/bundle" --preset fast --out "$out/fast" -q
fi
step "train --preset best on CUDA" "${GPU_CHECK_LIMIT_BEST:-300}" \
  $PY -m skulens.cli train --preset best --device cuda --out "$out/best" --no-baseline -q
[ -f "$out/best/report/report.json" ] && $PY -c "import json, sys; r = json.load(open(sys.argv[1]))
print('preset best on CUDA: val top-1', r['summary']['top1'], 'coarse', r['summary']['coarse_top1'])" "$out/best/report/report.json"

echo "== gpu_check summary ($out)"
printf '  %s\n' "${summary[@]}"
exit "$failed"  # 1 when a step failed or was stopped (a skipped step is not a failure)
