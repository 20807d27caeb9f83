#!/usr/bin/env bash
# Create .venv and install shortcut-policy with the PushT simulator, the MuJoCo suites (MuJoCo 3.3.0,
# gymnasium-robotics, Meta-World, and robosuite 1.5.2 without its numpy<2 pins), the dataset importers
# (h5py, pyarrow, PyAV), the export backends (onnx + onnxruntime CPU wheels, about 33 MB together, so
# CI runs the ONNX export tests) and test tools; then robomimic itself, without its dependencies (it
# would pull mujoco_py and torchvision), only so that a test can check that robomimic's own reader
# reads the files our exporter writes.
# torch is installed first and pinned: on a CPU machine `torch==2.13.0` takes the CPU wheel, while any
# unpinned or ranged torch would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[pusht,suites,data,deploy,dev]"
.venv/bin/python -m pip install -q --no-deps "robosuite==1.5.2" "robomimic==0.3.0"
.venv/bin/python -c "import torch, shortcut_policy, shortcut_policy.envs, gym_pusht; print('shortcut-policy ready: torch', torch.__version__)"
