"""Where closed-loop episodes ended (PushT: the block's final pose error); see --help.

    python scripts/final_poses.py --results runs/finals/shortcut.json runs/finals/flow.json --names shortcut flow
"""
from shortcut_policy.eval.cli import finals_main

if __name__ == "__main__":
    finals_main()
