"""The data-path figures of docs/data.md (import speed, chunking, loader throughput, same-data curves).

    python scripts/bench_data.py --shared ../shared/data --out docs/results/pusht_lowdim/data/data.json
"""
from shortcut_policy.data.bench import main

if __name__ == "__main__":
    main()
