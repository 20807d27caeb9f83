"""Offline evaluation on held-out demonstrations: for a robot we cannot simulate, how close the
policy's chunks come to what the demonstrator did, at each number of network calls.

Per step count N, over a fixed, seeded draw of validation windows (one noise draw each, the same
noise at every N):

- ``action_mse``: mean squared error of the executed chunk (the ``n_action_steps`` actions from the
  last observed step) against the demonstration, in normalized action units (the data range maps to
  [-1, 1], so dimensions in different units weigh alike);
- ``action_rmse``: the same error per action dimension in raw units, root-mean-square;
- ``horizon_mse``: normalized error over the whole predicted horizon.

Plus ``val_loss``, the training objective on the validation windows. A multi-modal demonstrator is
matched only on average (a policy that picks the other good mode scores worse here, not in closed
loop), so compare policies with each other on the same windows, as every table here does.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import default_collate

from .consistency import pick_windows


@torch.no_grad()
def offline_eval(policy, dataset, steps_list: Sequence[int], n_windows: int = 256, seed: int = 0,
                 batch_size: int = 64, sampler: str | None = None) -> dict[str, Any]:
    """Action error against the demonstrations of ``dataset`` (validation windows) per step count."""
    from ..train.loop import validation_loss

    policy.eval()
    items = pick_windows(dataset, n_windows, seed=seed)
    cfg = policy.cfg
    start, n_act = cfg.n_obs_steps - 1, cfg.n_action_steps
    norm = policy.normalizer
    out: dict[str, Any] = {"windows": len(items), "steps": {}}
    for n in steps_list:
        g = torch.Generator().manual_seed(seed)  # the same noise at every step count
        se_chunk, se_hor, se_raw = [], [], []
        for b in range(0, len(items), batch_size):
            batch = default_collate(items[b:b + batch_size])
            demo = batch["action"].to(policy.device)  # (B, H, A)
            pred = policy.predict_action_sequence(batch["obs"], n, generator=g, sampler=sampler)  # (B, H, A)
            nerr = (norm.normalize("action", pred) - norm.normalize("action", demo)) ** 2  # (B, H, A)
            se_hor.append(nerr.mean(dim=(1, 2)))
            se_chunk.append(nerr[:, start:start + n_act].mean(dim=(1, 2)))
            se_raw.append(((pred - demo)[:, start:start + n_act] ** 2).mean(dim=1))  # (B, A)
        raw = torch.cat(se_raw).mean(0).sqrt()
        out["steps"][str(n)] = {"action_mse": float(torch.cat(se_chunk).mean()),
                                "horizon_mse": float(torch.cat(se_hor).mean()),
                                "action_rmse": [float(x) for x in raw]}
    out["val_loss"] = validation_loss(policy, _Subset(items), batch_size, policy.device,
                                      n_batches=max(1, len(items) // batch_size))
    return out


class _Subset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def format_offline_table(results: dict[str, Any]) -> str:
    rows = ["| calls | action MSE (normalized) | horizon MSE | action RMSE (raw, per dim) |", "|---|---|---|---|"]
    for n, r in results["steps"].items():
        rmse = ", ".join(f"{x:.4g}" for x in r["action_rmse"])
        rows.append(f"| {n} | {r['action_mse']:.4f} | {r['horizon_mse']:.4f} | {rmse} |")
    return "\n".join(rows)
