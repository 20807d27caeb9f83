#!/usr/bin/env bash
# The device job: what a ~15-minute GPU window measures, in one command; results land in $OUT.
#
# On the device (its image has torch, einops, yaml, tqdm, but not zarr, hydra or the PushT simulator):
# carry their wheels in .whl/ (ignored by git), fetched once here:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl zarr==3.1.6 numcodecs==0.16.6 \
#       donfig==0.8.1.post1 google-crc32c==1.9.0 hydra-core==1.3.8 omegaconf==2.3.1 gymnasium==1.4.0 \
#       farama-notifications==0.0.6 gym-pusht==0.1.8 pymunk==6.11.1 cffi==2.1.1 pycparser==3.12 pygame==2.6.1 shapely==2.2.0
#   python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     # sdist only on PyPI
#   run(command="bash scripts/gpu_job.sh", carry=[".whl"], timeout_s=600)
# Here, the same steps at tiny sizes on the CPU (what the test of the script runs):
#   OUT=/tmp/gpu SMOKE=1 bash scripts/gpu_job.sh
#
# Steps: the GPU's name; the host waits of a training step (60 steps in CUDA's sync debug mode, counted
# per source line in $OUT/syncs.log); a 2-episode evaluation with its latency probe on the GPU (if it
# fails, the head-to-head evaluates on the CPU cores); the step time in fp32, bf16 and bf16 + torch.compile (probes/precision.json); the PushT low-dim head-to-head (scripts/headtohead.py: shortcut, flow matching,
# MeanFlow and DDPM x 3 training seeds trained side by side, as many steps as TRAIN_SECONDS allow,
# then 500 held-out episodes each, evaluated by parallel processes) with one-call latency (eager,
# torch.compile with CUDA graphs); then $OUT/results.tar.gz (evaluations, metrics, logs, no
# checkpoints) and the seed-0 EMA weights in fp16 ($OUT/<run>.fp16.safetensors), to re-check here.
set -euo pipefail
: "${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ] && ! "$PY" -c "import zarr, hydra, gym_pusht" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# the package as installed: envs/, configs/ and datasets/ inside shortcut_policy (pyproject's package-dir)
PKG=/tmp/sp_pkg
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r shortcut_policy "$PKG"/
for d in envs configs datasets; do rm -rf "${PKG:?}/shortcut_policy/$d"; cp -r "$d" "$PKG/shortcut_policy/$d"; done
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
(cd /tmp && "$PY" -c "import shortcut_policy.configs, shortcut_policy.envs, shortcut_policy.datasets; print('package ok')")
W=${WORK:-/tmp/h2h}
if [ "${SMOKE:-0}" = 1 ]; then
  H2H="--device cpu --seeds 0 --objectives shortcut flow --calib-steps 20 --log-every 5 --train-seconds 4
       --round-steps 10 --batch-size 16 --episodes 2 --eval-seconds 600 --jobs 2"
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name())"
  P=/tmp/probes && rm -rf "$P" && mkdir -p "$P"  # small probe files, returned inside results.tar.gz
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$P/gpu.csv"
  "$PY" -c "import zarr, hydra, gymnasium, gym_pusht, pymunk, shapely; print('imports ok')" || echo "EVAL IMPORTS FAILED"
  # host waits of a training step: 60 steps, logged and checked every 30, sync debug mode on (each wait
  # torch sees prints a warning, counted per source line: a step's waits are the lines counted about 60
  # times; start-up, validation and the save add their own); the step rate is in the run's metrics.jsonl
  rm -rf /tmp/syncs
  (cd /tmp && timeout 90 "$PY" -W always -c "import torch; torch.cuda.set_sync_debug_mode('warn')
from shortcut_policy.train.cli import main; main()" train.device=cuda train.steps=60 train.log_every=30 \
    train.ckpt_every=60 train.batch_size=256 train.num_threads=1 train.progress=false out_dir=/tmp/syncs \
    > "$OUT/syncs.log" 2>&1; echo "sync probe rc $?; host waits by source line:"
    grep -o '[^ ]*\.py:[0-9]*: UserWarning: called a synchronizing' "$OUT/syncs.log" | sort | uniq -c | sort -rn | head -15
    tail -n 2 /tmp/syncs/metrics.jsonl) || echo "sync probe failed"
  # the evaluation path on the GPU before the window is spent on it: 2 episodes and the latency probe of
  # the sync probe's checkpoint (a device mismatch there once failed all 52 evaluations after their
  # episodes); if it fails, the head-to-head evaluates its networks on the CPU cores instead
  EVAL_DEVICE=cuda
  if [ -f /tmp/syncs/checkpoints/latest.pt ]; then
    if (cd /tmp && timeout 120 "$PY" -c "import sys; sys.argv[0] = 'shortcut-eval'
from shortcut_policy.eval.cli import main; main()" --checkpoint /tmp/syncs/checkpoints/latest.pt --device cuda \
        --threads 1 --num-inference-steps 1 --episodes 2 --latency-iters 3 --no-progress --out "$P/preflight.json") \
        > "$P/preflight.log" 2>&1; then echo "preflight evaluation on the GPU ok"
    else EVAL_DEVICE=cpu; echo "PREFLIGHT EVALUATION ON THE GPU FAILED (evaluating on the CPU):"; tail -c 2000 "$P/preflight.log"; fi
  fi
  # where a step's time goes: fp32, bf16 autocast and bf16 + torch.compile (CUDA graphs) of the same step
  timeout 120 "$PY" scripts/bench_precision.py --device cuda --net unet1d_small --batch-size 256 --steps 20 \
    --rounds 1 --out "$P/precision.json" 2>&1 | grep -v Warning | tail -n 5 || echo "precision bench failed"
  # what is left of the window: calibration (about 70 s), training, then at least 200 s of evaluation
  LEFT=$(( ${TOTAL_SECONDS:-560} - SECONDS ))
  TRAIN=${TRAIN_SECONDS:-$(( LEFT - 280 > 60 ? LEFT - 280 : 60 ))}
  echo "$LEFT s left: training $TRAIN s"
  H2H="--device cuda --eval-device $EVAL_DEVICE --train-seconds $TRAIN --eval-seconds ${EVAL_SECONDS:-220}
       --eval-grace 80 --total-seconds $LEFT --jobs 15 --latency"
fi
rm -rf "$W"
# shellcheck disable=SC2086
"$PY" scripts/headtohead.py --out "$W" $H2H 2>&1 | tee "$OUT/headtohead.log" || echo "headtohead failed: see headtohead.log"
# no checkpoints (a killed calibration run can leave a partial one under checkpoints/)
if [ "${SMOKE:-0}" != 1 ] && [ -d /tmp/probes ]; then mkdir -p "$W" && cp -r /tmp/probes "$W/probes"; fi
tar czf "$OUT/results.tar.gz" -C "$W" --exclude='checkpoints' --exclude='hydra' .
"$PY" - "$W" "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
work, out = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(work.glob("*-s0/checkpoints/latest.safetensors")):
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    dest = out / f"{f.parents[1].name}.fp16.safetensors"
    save_file(half, str(dest), metadata=meta)
    print("wrote", dest, round(dest.stat().st_size / 2**20, 1), "MiB")
PYEOF
ls -la "$OUT"
echo "GPU JOB DONE"
