#!/usr/bin/env bash
# The GPU benchmarks in one go (issue 11), on a machine with one CUDA GPU: about 8 minutes.
# Needs torch, torchvision, numpy, pandas, pyyaml, scipy, pydantic and pytorch-metric-learning, and
# tcm (src/ is put on PYTHONPATH here); no DVC, papermill, MLflow or network.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # default OUT_DIR: $OUT, else reports/benchmarks/gpu
#
# Prints, and writes to OUT_DIR (log.txt and one JSON per part):
#   1. the training step against bare loops (eager, channels_last, bf16): train_step.py
#   2. tcm train end to end on generated 341x256 JPEGs, ResNet-50 (workers' PIL decoding and decoding
#      on the GPU) and ViT-B/16 (GPU decoding), each against the bare compiled model step and the
#      loader alone measured in the same run: train_e2e.py
#   3. TCM, Smooth-AP and RS@k at batch 4,000 x 512, and the chunked step at 4,000: losses.py
#   4. evaluation at SOP and iNaturalist scale against the GEMM + top-k floor: eval_scale.py
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-reports/benchmarks/gpu}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
workers=$(( $(nproc) - 1 ))
status=0
exec > >(tee "$out/log.txt") 2>&1
part() {  # name, command...: run one part, keep going if it fails
  local name=$1; shift
  echo "=== $name: $* ($(date -u +%H:%M:%S))"
  "$@" || { echo "=== $name FAILED ($?)"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "cpus $(nproc), loader workers $workers"
part train_step python3 benchmarks/train_step.py --models resnet50 --size 224 --batch 256 --steps 5 --rounds 3
part train_e2e_resnet50 python3 benchmarks/train_e2e.py --backbones resnet50 --decode workers device \
  --workers "$workers" --epochs 3 --json "$out/train_e2e_resnet50.json"
part train_e2e_vit python3 benchmarks/train_e2e.py --backbones vit_b_16 --decode device \
  --workers "$workers" --epochs 3 --samples 6400 --json "$out/train_e2e_vit.json"
part losses python3 benchmarks/losses.py --device cuda --json "$out/losses.json"
part eval_scale python3 benchmarks/eval_scale.py --scales sop inat --methods floor ours --device cuda \
  --json "$out/eval_scale.json"
echo "=== done ($(date -u +%H:%M:%S)), status $status"
exit $status
