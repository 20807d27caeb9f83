"""Training cost of each objective against flow matching, in one run (shortcut_policy/train/cost.py).

    python scripts/objective_cost.py --threads 1 --out docs/results/pusht_lowdim/training/objective_cost.json
"""
from shortcut_policy.train.cost import main

if __name__ == "__main__":
    main()
