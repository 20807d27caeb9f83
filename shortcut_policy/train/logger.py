"""Run logging: a JSON-lines file always; wandb only when asked (``train.wandb``: "disabled" by default,
"offline" writes a local wandb run, "online" needs an account). wandb is an optional dependency
(``pip install 'shortcut-policy[wandb]'``), imported only when used."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

WANDB_MODES = ("disabled", "offline", "online")


class RunLogger:
    """Writes ``out_dir/metrics.jsonl`` (one JSON object per ``log``) and mirrors it to wandb when
    ``wandb_mode`` is "offline" or "online" (default "disabled": no wandb at all)."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], wandb_mode: str = "disabled",
                 project: str = "shortcut-policy", name: str | None = None, enabled: bool = True):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {wandb_mode!r}")
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if wandb_mode != "disabled":
            try:
                import wandb  # optional: imported only when used
            except ImportError as e:
                raise ImportError(f"train.wandb={wandb_mode!r} needs wandb ({e}); install it with "
                                  "pip install 'shortcut-policy[wandb]', or set train.wandb=disabled") from e

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(project=project, name=name, config=config, mode=wandb_mode,
                                     dir=str(out_dir), resume="allow")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append ``metrics`` to metrics.jsonl; with wandb on, log them there too (values that name an
        .mp4 file, e.g. an evaluation rollout, as videos)."""
        if not self.enabled:
            return
        bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise FloatingPointError(f"metrics {bad} are NaN or inf at step {step}: {metrics}")
        try:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}, allow_nan=False) + "\n")
        except OSError as e:  # a full disk: the line may be cut, which the resume drops
            raise OSError(e.errno, f"cannot append step {step} to {self.path}: {e.strerror} (disk full or not "
                          "writable?); the last checkpoint is intact and the same command resumes from it") from e
        if self._wandb is not None:
            import wandb

            logged = {k: (wandb.Video(v, format="mp4") if isinstance(v, str) and v.endswith(".mp4") else v)
                      for k, v in metrics.items()}
            self._wandb.log(logged, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
