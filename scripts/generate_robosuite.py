"""Scripted-expert robosuite demonstrations as a robomimic HDF5 file (shortcut_policy/envs/robosuite_experts.py).

    python scripts/generate_robosuite.py --task Lift --episodes 200 --out data/lift.hdf5
"""
from shortcut_policy.envs.robosuite_experts import main

if __name__ == "__main__":
    main()
