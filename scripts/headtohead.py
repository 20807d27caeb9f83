"""The head-to-head in one time budget: objectives x seeds trained side by side, then evaluated on held-out
seeds by parallel processes (shortcut_policy/eval/headtohead.py).

    python scripts/headtohead.py --out runs/h2h-gpu --device cuda --train-seconds 240 --eval-seconds 220
    python scripts/headtohead.py --out runs/h2hq --device cpu --steps 3000 --batch-size 64 --train-jobs 2 \
        --objectives meanflow shortcut flow --eval-seconds 100000 --jobs 2
"""
from shortcut_policy.eval.headtohead import main

if __name__ == "__main__":
    main()
