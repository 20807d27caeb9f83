"""Training step time in fp32, bf16 autocast and bf16 + torch.compile (shortcut_policy/train/cost.py).

    python scripts/bench_precision.py --device cuda --out $OUT/precision.json
"""
from shortcut_policy.train.cost import precision_main

if __name__ == "__main__":
    precision_main()
