"""Meta-World scripted-policy demonstrations as a zarr store (shortcut_policy/envs/metaworld.py).

    python scripts/generate_metaworld.py --tasks mt10 --episodes 50 --out data/metaworld_mt10.zarr
"""
from shortcut_policy.envs.metaworld import main

if __name__ == "__main__":
    main()
