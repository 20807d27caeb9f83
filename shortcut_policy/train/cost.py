"""Training cost of each objective on one network and one batch stream, in one process (so the numbers
compare): milliseconds per optimizer step (loss, backward, AdamW) and the ratio to flow matching.

    python scripts/objective_cost.py --threads 1 --out docs/results/pusht_lowdim/comparisons/objective_cost.json
"""
from __future__ import annotations

import time
from typing import Any

import torch

KINDS = ("flow", "shortcut", "meanflow", "ddpm")


def step_times(dataset, kinds=KINDS, net: str = "unet1d_small", batch_size: int = 64, steps: int = 30,
               warmup: int = 3, rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Median ms per optimizer step of each objective's policy on the same batches; kinds are timed in
    interleaved rounds so a slow spell of the machine does not land on one of them."""
    from ..policy import PolicyConfig, ShortcutPolicy

    g = torch.Generator().manual_seed(seed)
    batches = [dataset.get_batch(torch.randint(len(dataset), (batch_size,), generator=g).tolist()) for _ in range(4)]
    policies, opts = {}, {}
    for kind in kinds:
        torch.manual_seed(seed)
        p = ShortcutPolicy(PolicyConfig(shape_meta=dataset.shape_meta.to_dict(), net=net, objective={"kind": kind}))
        p.normalizer.load_state_dict(dataset.get_normalizer().state_dict())
        policies[kind], opts[kind] = p.train(), torch.optim.AdamW(p.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds:
            p, opt = policies[kind], opts[kind]
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                loss, _ = p.compute_loss(batches[i % len(batches)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= warmup:
                    times[kind].append(time.perf_counter() - t0)
    med = {k: 1e3 * float(torch.tensor(v).median()) for k, v in times.items()}
    base = med.get("flow")
    return {"ms_per_step": med, "ratio_to_flow": {k: v / base for k, v in med.items()} if base else {},
            "batch_size": batch_size, "net": net, "steps_timed": steps * rounds,
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    from .. import cli
    from ..data.dataset import SequenceDataset
    from ..results import result_doc, write_result

    ap = cli.parser(__doc__, "objective_cost")
    ap.add_argument("--data", default="pkg://shortcut_policy.datasets/pusht_lowdim.zarr")
    ap.add_argument("--net", default="unet1d_small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = SequenceDataset(args.data, {"keypoint": "keypoint", "agent_pos": {"key": "state", "index": [0, 2]}})
    res = step_times(ds, net=args.net, batch_size=args.batch_size, steps=args.steps)
    for k, v in res["ms_per_step"].items():
        print(f"{k:9s} {v:7.1f} ms per step  ({res['ratio_to_flow'][k]:.2f}x flow matching)")
    if args.out:
        write_result(args.out, result_doc("comparison", "pusht_lowdim", "objective-cost", {}, **res,
                                          about="training cost per optimizer step of each objective, one network"))


if __name__ == "__main__":
    main()
