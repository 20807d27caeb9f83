"""The data-path figures of docs/data.md in one run: LeRobot and robomimic import speed, the LeRobot
PushT import against the zarr it was made from, image chunking in the store, loader vs training
throughput, and the same loss curve from the zarr and from the LeRobot import.

    python scripts/bench_data.py --shared ../shared/data --out docs/results/data/pusht-data.json
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from shortcut_policy.data.bench import plot_loss_curves, run_data_benchmarks
from shortcut_policy.utils import provenance, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True, help="folder holding pusht/ and lerobot_pusht_v3/")
    ap.add_argument("--lowdim", type=Path, default=Path("datasets/pusht_lowdim.zarr"))
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as work:
        res = run_data_benchmarks(args.shared / "lerobot_pusht_v3", args.shared / "pusht" / "pusht_cchi_v7_replay.zarr",
                                  args.lowdim, Path(work), train_steps=args.train_steps)
    doc = {"task": "pusht", "method": "data", "kind": "data", **provenance(), "steps": {}, **res}
    write_result(args.out, doc)
    plot_loss_curves(res["same_data"], str(args.out.with_suffix(".png")),
                     f"PushT, agent position only: the zarr vs the LeRobot import ({doc['date']}, {doc['machine']})")
    for key in ("lerobot_import", "robomimic_import", "throughput"):
        print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in res[key].items()})
    print("same data, max train-loss difference:", res["same_data"]["max_abs_train_loss_difference"])


if __name__ == "__main__":
    main()
