#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a PushT low-dim policy (the default objective, MeanFlow) on the shipped
# demonstrations (10-25 minutes on a 2-core CPU, depending on the machine), then evaluate it in closed loop on 50 fixed
# seeds at 1, 2, 4, 8 and 16 network calls per action chunk and print the table.
#   bash scripts/main.sh                         # defaults
#   bash scripts/main.sh train=dp policy=unet1d  # Hydra overrides go to the training run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}
.venv/bin/shortcut-train out_dir="$OUT" "$@"
.venv/bin/shortcut-eval --checkpoint "$OUT/checkpoints/latest.pt" --num-inference-steps 1 2 4 8 16 \
  --episodes 50 --out "$OUT/eval.json"
