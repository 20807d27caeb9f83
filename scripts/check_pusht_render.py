"""The simulator's PushT camera against the dataset's frames, side by side (shortcut_policy/eval/render_check.py).

    python scripts/check_pusht_render.py --data ../shared/data/pusht/pusht_cchi_v7_replay.zarr \
        --out docs/results/pusht_image/data/render_check.json --plot docs/images/pusht_render_check.png
"""
from shortcut_policy.eval.render_check import main

if __name__ == "__main__":
    main()
