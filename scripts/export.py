"""Export a policy to TorchScript or ONNX at a fixed number of calls, checked against eager: `shortcut-export`.

    python scripts/export.py --checkpoint runs/X/checkpoints/latest.pt --num-inference-steps 1 --format onnx
"""
import sys

from shortcut_policy.deploy.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
