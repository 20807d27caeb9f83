"""Does the simulator see what the dataset saw? PushT's 96x96 camera, side by side.

For chosen frames of a PushT image store (Diffusion Policy's ``data/img`` with ``data/state``), the
simulator is reset to the frame's recorded state and its observation is compared with the stored
frame: mean and max absolute error in 0..255 units, the share of pixels off by more than 30, and a
picture (dataset | simulator | error x10) for the docs. Episode starts are exact poses (no agent-block
contact, see ``envs.pusht``), so the default frames are episode starts.

    python scripts/check_pusht_render.py --data ../shared/data/pusht/pusht_cchi_v7_replay.zarr \
        --out docs/results/pusht_image/data/render_check.json --plot docs/images/pusht_render_check.png
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cli import parser
from ..results import result_doc, write_result
from ..utils import save_figure


def compare_renders(store: str | Path, episodes: list[int]) -> tuple[list[dict], list[tuple[np.ndarray, np.ndarray]]]:
    """Per episode start: {"episode", "frame", "mae", "max", "share_over_30"} and the (dataset, sim) images."""
    import zarr

    from ..data.replay_buffer import DatasetError
    from ..envs.pusht import PushTImageEnv, legacy_reset_state

    root = zarr.open_group(str(store), mode="r")
    for key in ("data/img", "data/state", "meta/episode_ends"):
        if key not in root:
            raise DatasetError(f"{store} has no {key} (a Diffusion Policy PushT image store has data/img and data/state)")
    ends = root["meta/episode_ends"][:]
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    env = PushTImageEnv()
    rows, pairs = [], []
    for e in episodes:
        if not 0 <= e < len(starts):
            raise ValueError(f"episode {e} is outside 0..{len(starts) - 1} of {store}")
        t = int(starts[e])
        obs, _ = env.reset(seed=0, options={"reset_to_state": legacy_reset_state(root["data/state"][t])})
        data = np.asarray(root["data/img"][t]).astype(np.float32)
        sim = obs["image"].astype(np.float32)
        err = np.abs(sim - data)
        rows.append({"episode": e, "frame": t, "mae": float(err.mean()), "max": float(err.max()),
                     "share_over_30": float((err.max(-1) > 30).mean())})
        pairs.append((data.astype(np.uint8), obs["image"]))
    env.close()
    return rows, pairs


def plot_pairs(pairs, rows, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 3, figsize=(6.6, 2.3 * len(pairs)), squeeze=False)
    for r, ((data, sim), row) in enumerate(zip(pairs, rows)):
        err = np.clip(np.abs(sim.astype(np.int16) - data.astype(np.int16)).max(-1) * 10, 0, 255).astype(np.uint8)
        for c, (img, title) in enumerate(((data, f"dataset, episode {row['episode']}"), (sim, "simulator"),
                                          (err, f"|error| x10, mean {row['mae']:.2f}/255"))):
            ax = axes[r, c]
            ax.imshow(img, cmap="magma" if c == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, "check_pusht_render")
    ap.add_argument("--data", required=True, help="a PushT image store (data/img, data/state)")
    ap.add_argument("--episodes", type=int, nargs="+", default=[0, 5, 50, 150])
    ap.add_argument("--out", default=None, help="results JSON")
    ap.add_argument("--plot", default=None, help="side-by-side picture (png)")
    args = ap.parse_args(argv)
    rows, pairs = compare_renders(args.data, args.episodes)
    for row in rows:
        print(f"episode {row['episode']:3d} (frame {row['frame']:5d}): mean |error| {row['mae']:.3f}/255, "
              f"max {row['max']:.0f}, pixels off by > 30: {100 * row['share_over_30']:.2f}%")
    if args.plot:
        print(f"wrote {plot_pairs(pairs, rows, args.plot)}")
    if args.out:
        write_result(args.out, result_doc("data", "pusht_image", "render-check", {}, frames=rows, data=str(args.data),
                                          about="the simulator's 96x96 view of dataset states vs the dataset's frames"))


if __name__ == "__main__":
    main()
