"""Export a trained policy at a fixed step count to TorchScript or ONNX, then check it against eager.

    python scripts/export.py --checkpoint runs/r2-shortcut/checkpoints/latest.pt --steps 1 \\
        --format onnx --out exports/pusht_shortcut_1step.onnx

Writes the artifact and ``<artifact>.json`` (metadata plus the verification report). The check
runs the exported file and eager ``predict_action_chunk`` on the same observations and noise and
fails (exit code 1) when they differ by more than ``--atol`` normalized action units.
A DDPM-trained checkpoint exports with the deterministic DDIM sampler (``--sampler ddim``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shortcut_policy.deploy.export import export_policy, verify_export
from shortcut_policy.deploy.export_format import sidecar_path
from shortcut_policy.policy import ShortcutPolicy

SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, default=1, help="network calls per chunk, fixed in the graph")
    ap.add_argument("--format", choices=sorted(SUFFIX), default="onnx")
    ap.add_argument("--out", default=None, help="artifact path (default exports/<run>_<steps>step.<ext>)")
    ap.add_argument("--sampler", default=None, help="ddim for a DDPM-trained checkpoint")
    ap.add_argument("--weights", choices=["ema", "online"], default="ema")
    ap.add_argument("--atol", type=float, default=1e-4, help="tolerance in normalized action units")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ck = Path(args.checkpoint)
    out = Path(args.out) if args.out else Path("exports") / f"{ck.parent.parent.name}_{args.steps}step{SUFFIX[args.format]}"
    if out.suffix != SUFFIX[args.format]:
        raise SystemExit(f"--out {out} does not end in {SUFFIX[args.format]} (the suffix tells the loader the format)")
    policy, run = ShortcutPolicy.from_checkpoint(ck, weights=args.weights)
    meta = export_policy(policy, out, args.steps, sampler=args.sampler, checkpoint=ck, run=run)
    report = verify_export(policy, out, atol=args.atol, raise_on_fail=False)
    meta["verification"] = {k: report[k] for k in ("max_abs_err", "max_abs_err_normalized", "atol_normalized",
                                                   "ok", "cases", "batch_sizes")}
    sidecar_path(out).write_text(json.dumps(meta, indent=1) + "\n")
    print(f"exported {policy.cfg.objective.kind} policy ({meta['sampler']}, {args.steps} step(s), train step "
          f"{meta['train_step']}) to {out} ({out.stat().st_size / 1e6:.1f} MB) + {sidecar_path(out).name}")
    print(f"exported vs eager on the same noise ({report['cases']} cases, batch {report['batch_sizes']}): "
          f"max abs error {report['max_abs_err']:.3g} (raw action units), "
          f"{report['max_abs_err_normalized']:.3g} normalized (tolerance {args.atol}): "
          f"{'OK' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
