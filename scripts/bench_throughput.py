"""Loader against training throughput, low-dim and image PushT (shortcut_policy/data/bench.py).

    python scripts/bench_throughput.py --image-data ../shared/data/pusht/pusht_cchi_v7_replay.zarr \
        --out docs/results/pusht_image/data/throughput.json
"""
from shortcut_policy.data.bench import throughput_main

if __name__ == "__main__":
    throughput_main()
