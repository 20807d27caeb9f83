"""Import demonstrations into a zarr replay buffer (robomimic HDF5, LeRobot, Diffusion Policy zarr) or export
one to robomimic HDF5; the same command as ``shortcut-import``. See ``--help``.

    python scripts/import_data.py robomimic --src lift.hdf5 --out data/lift.zarr --task-config configs/task/lift.yaml
"""
import sys

from shortcut_policy.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
