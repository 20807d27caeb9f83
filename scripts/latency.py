"""Chunk latency per backend and number of network calls, batch 1: `shortcut-latency`.

    python scripts/latency.py --checkpoint runs/S/checkpoints/latest.pt --threads 1 --out latency.json
"""
from shortcut_policy.deploy.cli import latency_main

if __name__ == "__main__":
    latency_main()
