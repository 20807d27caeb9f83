"""Training samples/s, one process against torchrun DDP on a CPU (shortcut_policy/train/cost.py).

    python scripts/bench_processes.py --out docs/results/pusht_lowdim/training/processes.json
"""
from shortcut_policy.train.cost import processes_main

if __name__ == "__main__":
    processes_main()
