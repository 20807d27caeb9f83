"""Train a policy: the same command as `shortcut-train` (Hydra overrides, e.g. `objective=flow train=long`).

    python scripts/train.py                                   # PushT low-dim shortcut policy, quick CPU budget
    python scripts/train.py objective=flow out_dir=runs/flow  # rerun the same command to resume
"""
from shortcut_policy.train.cli import main

if __name__ == "__main__":
    main()
