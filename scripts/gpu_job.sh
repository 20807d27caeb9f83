#!/usr/bin/env bash
# The device job: what a ~15-minute GPU window measures, in one command; results land in $OUT.
#
# On the device (its image has torch, einops, yaml, tqdm, but not zarr): carry the wheels in .whl/,
# fetched once here (they are ignored by git):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
#   run(command="bash scripts/gpu_job.sh", carry=[".whl"], timeout_s=600)
# Here, the same steps at tiny sizes on the CPU (what the tests of the script run):
#   OUT=/tmp/gpu SMOKE=1 bash scripts/gpu_job.sh
#
# Steps: the GPU's name, then the training step time of Diffusion Policy's UNet (batch 256, PushT
# low-dim batches, shortcut objective) in fp32, bf16 autocast and bf16 + torch.compile.
set -euo pipefail
: "${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ] && ! "$PY" -c "import zarr" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
if [ "${SMOKE:-0}" = 1 ]; then
  BENCH="--device cpu --net unet1d_small --batch-size 8 --steps 2 --rounds 1 --threads 1 --no-compile"
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
  BENCH="--device cuda --batch-size 256 --steps 30 --rounds 3"
fi
"$PY" scripts/bench_precision.py $BENCH --out "$OUT/precision.json" 2>&1 | tee "$OUT/precision.log"
echo "GPU JOB DONE"
