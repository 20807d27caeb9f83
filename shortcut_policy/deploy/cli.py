"""Deployment entry points: export (``shortcut-export``), the latency benchmark (``shortcut-latency``)
and the simulated real-time deployment (``shortcut-deploy-sim``). Flags follow ``shortcut_policy.cli``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .. import cli
from ..results import result_doc, write_result

EXPORT_DOC = """Export a trained policy at a fixed number of network calls to TorchScript or ONNX, then check it
against eager (exit code 1 when they differ by more than --atol normalized action units).

    shortcut-export --checkpoint runs/X/checkpoints/latest.pt --num-inference-steps 1 --format onnx \\
        --out exports/pusht_1step.onnx
    shortcut-export --checkpoint runs/D/checkpoints/latest.pt --num-inference-steps 10 --sampler ddim --format onnx

Writes the artifact and <artifact>.json (metadata plus the verification report).
"""
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def export_main(argv: list[str] | None = None) -> int:
    ap = cli.parser(EXPORT_DOC, "shortcut-export")
    cli.add_policy_args(ap)
    cli.add_calls_arg(ap, "fixed in the graph; default 1", several=False)
    ap.add_argument("--sampler", default=None, help="ddim for a DDPM-trained checkpoint")
    ap.add_argument("--format", choices=sorted(SUFFIX), default="onnx")
    ap.add_argument("--out", default=None, help="artifact path (default exports/<run>_<calls>step.<ext>)")
    ap.add_argument("--atol", type=float, default=1e-4, help="tolerance in normalized action units")
    args = ap.parse_args(argv)
    from .export import export_policy, verify_export
    from .export_format import sidecar_path

    args.device = "cpu" if args.device == "auto" else args.device  # exports are traced on the CPU
    n = args.num_inference_steps or 1
    ck = Path(args.checkpoint)
    out = Path(args.out) if args.out else Path("exports") / f"{ck.parent.parent.name}_{n}step{SUFFIX[args.format]}"
    if out.suffix != SUFFIX[args.format]:
        raise SystemExit(f"--out {out} does not end in {SUFFIX[args.format]} (the suffix tells the loader the format)")
    policy, run = cli.load_policy(args)
    try:
        meta = export_policy(policy, out, n, sampler=args.sampler, checkpoint=ck, run=run)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    report = verify_export(policy, out, atol=args.atol, raise_on_fail=False)
    meta["verification"] = {k: report[k] for k in ("max_abs_err", "max_abs_err_normalized", "atol_normalized",
                                                   "ok", "cases", "batch_sizes")}
    sidecar_path(out).write_text(json.dumps(meta, indent=1) + "\n")
    if not report["ok"]:  # nothing loadable stays under the requested name
        rejected = out.with_name(out.name + ".rejected")
        out.replace(rejected)
        sidecar_path(out).replace(sidecar_path(rejected))
        print(f"export of {ck} FAILED verification: max error {report['max_abs_err_normalized']:.3g} normalized "
              f"(tolerance {args.atol}); kept for inspection as {rejected}, nothing written to {out}")
        return 1
    print(f"exported {policy.objective.kind} policy ({meta['sampler']}, {n} call(s), train step {meta['train_step']}) "
          f"to {out} ({out.stat().st_size / 1e6:.1f} MB) + {sidecar_path(out).name}")
    print(f"exported vs eager on the same noise ({report['cases']} cases, batch {report['batch_sizes']}): max abs "
          f"error {report['max_abs_err']:.3g} (raw action units), {report['max_abs_err_normalized']:.3g} normalized "
          f"(tolerance {args.atol}): OK")
    return 0


LATENCY_DOC = """Chunk latency of trained policies in one process: the bare network forward and the whole chunk at
each number of network calls per backend (eager torch; torch.compile with CUDA graphs on a GPU;
TorchScript and ONNX Runtime exports, each checked against eager first), batch 1, warm, median and p99.
A DDPM-trained checkpoint is timed with DDPM and DDIM.

    shortcut-latency --checkpoint runs/S/checkpoints/latest.pt runs/D/checkpoints/latest.pt --names shortcut ddpm \\
        --threads 1 --out docs/results/pusht_lowdim/deploy/latency.json
"""


def latency_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(LATENCY_DOC, "shortcut-latency")
    cli.add_policy_args(ap, several=True)
    ap.add_argument("--names", nargs="+", default=None, help="one per checkpoint (default: the objective kind)")
    cli.add_calls_arg(ap, "default: each sampler's sweep")
    ap.add_argument("--backends", nargs="+", default=["eager", "compiled", "torchscript", "onnx"],
                    help="eager, compiled (CUDA only), torchscript, onnx")
    ap.add_argument("--export-dir", default=None, help="keep the exported files here (default: a temporary folder)")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=15.0, help="cap per row (slow counts get fewer calls)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from .bench import latency_benchmark

    if args.names and len(args.names) != len(args.checkpoint):
        raise SystemExit(f"--names has {len(args.names)} entries for {len(args.checkpoint)} checkpoints")
    torch.set_num_interop_threads(1)
    policies, task = {}, None
    for i, ck in enumerate(args.checkpoint):
        policy, run = cli.load_policy(args, ck)
        if task not in (None, run["task"]["name"]):
            raise SystemExit(f"{ck} is a {run['task']['name']!r} policy, the others {task!r}: one task per file")
        task = run["task"]["name"]
        policies[args.names[i] if args.names else policy.objective.kind] = (policy, run)
    export_dir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="latency_"))
    try:
        res = latency_benchmark(policies, args.num_inference_steps, args.backends, export_dir, iters=args.iters,
                                warmup=args.warmup, max_seconds=args.max_seconds)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps({k: res[k] for k in ("overhead_ratio", "export_speedup", "onnx_speedup", "encoder_share")}, indent=1))
    if args.out:
        write_result(args.out, result_doc("latency", task, "latency", res.pop("steps"), **res, batch=1,
                                          threads=torch.get_num_threads(), device=str(next(iter(policies.values()))[0].device),
                                          checkpoints=dict(zip(policies, args.checkpoint)), torch_version=torch.__version__))


DEPLOY_DOC = """Simulated deployment: the real-time controller drives the task's simulator in wall-clock time
(shortcut_policy/deploy/realtime.py): deadline misses, stale actions, fallbacks, score and success per row.

    shortcut-deploy-sim --checkpoint runs/S/checkpoints/latest.pt --num-inference-steps 1 16 --auto \\
        --baseline runs/D/checkpoints/latest.pt --episodes 20 --control-hz 10 --threads 1 \\
        --out docs/results/pusht_lowdim/deploy/deploy_sim.json

Rows: the checkpoint at each --num-inference-steps entry, --auto (the most calls whose p99 latency fits
the deadline minus --margin-ms), and with --baseline a DDPM-trained checkpoint at DDPM-100 and DDIM-10.
"""


def deploy_sim_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(DEPLOY_DOC, "shortcut-deploy-sim")
    cli.add_policy_args(ap)
    cli.add_calls_arg(ap, "default 1 4 16")
    ap.add_argument("--auto", action="store_true", help="add a row at the most calls that fit the deadline")
    ap.add_argument("--baseline", default=None, help="a DDPM-trained checkpoint: adds DDPM-100 and DDIM-10 rows")
    ap.add_argument("--backend", choices=["eager", "torchscript", "onnx"], default="eager",
                    help="how the checkpoint's rows run (exported on the fly); baselines run eager")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--max-episode-steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--control-hz", type=float, default=10.0)
    ap.add_argument("--replan-every", type=int, default=None, help="ticks between requests (default n_action_steps // 2)")
    ap.add_argument("--deadline-ms", type=float, default=None, help="per-chunk deadline (default one period)")
    ap.add_argument("--margin-ms", type=float, default=10.0, help="safety margin of --auto")
    ap.add_argument("--ensemble-k", type=float, default=None, help="ACT temporal ensembling (off by default)")
    ap.add_argument("--switch-interval-ms", type=float, default=1.0,
                    help="Python's GIL switch interval (a waking control thread waits up to this long)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from ..task import TaskConfig, make_runner
    from .budget import auto_steps
    from .controller import ControllerConfig
    from .realtime import evaluate, format_rows, steps_table

    sys.setswitchinterval(args.switch_interval_ms / 1e3)
    torch.set_num_interop_threads(1)
    config = ControllerConfig(control_hz=args.control_hz, replan_every=args.replan_every,
                              deadline_s=None if args.deadline_ms is None else args.deadline_ms / 1e3,
                              ensemble_k=args.ensemble_k)
    policy, run = cli.load_policy(args)
    task = TaskConfig.from_dict(run["task"])
    if not task.simulated:
        raise SystemExit(f"task {task.name!r} has no simulator (task.env is null): nothing to deploy against")
    runner = make_runner(task, policy.shape_meta, n_episodes=1)
    cfg = policy.cfg
    max_steps = args.max_episode_steps or task.env.get("max_episode_steps", 300)
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    out = {"checkpoint": args.checkpoint, "baseline": args.baseline, "backend": args.backend,
           "threads": torch.get_num_threads(), "switch_interval_ms": args.switch_interval_ms,
           "control_hz": args.control_hz, "replan_every": args.replan_every or max(1, cfg.n_action_steps // 2),
           "deadline_ms": config.deadline * 1e3, "ensemble_k": args.ensemble_k, "episodes": args.episodes,
           "max_episode_steps": max_steps, "n_action_steps": cfg.n_action_steps, "rows": {}}

    def infer_for(p, n: int, sampler: str | None, backend: str, r):
        if backend == "eager":
            return lambda seed: p.act_fn(n, torch.Generator().manual_seed(seed), sampler)
        from .export import export_policy, verify_export
        from .runtime import ExportedPolicy

        path = Path(tempfile.mkdtemp(prefix="deploy_sim_")) / f"p{n}{'.pt' if backend == 'torchscript' else '.onnx'}"
        export_policy(p, path, n, sampler=sampler, checkpoint=args.checkpoint, run=r)
        exported = ExportedPolicy.load(path, threads=torch.get_num_threads())  # once: a session takes seconds
        verify_export(p, path, batch_sizes=(1,), trials=1, loaded=exported)
        return lambda seed: (exported.reseed(seed), exported)[1]

    def row(name, p, r, n, sampler, backend):
        print(f"{name}:", flush=True)
        out["rows"][name] = {"steps": n, "sampler": sampler or p.objective.kind, "backend": backend,
                             **evaluate(runner, infer_for(p, n, sampler, backend, r), p.shape_meta, p.cfg.n_obs_steps,
                                        p.cfg.n_action_steps, seeds, config, max_steps, name)}

    for n in cli.calls_for(policy, args.num_inference_steps or [1, 4, 16], None):
        row(f"{policy.objective.kind}@{n}", policy, run, n, None, args.backend)
    if args.auto:
        example = {k: v.cpu().numpy() for k, v in policy.example_obs(batch=1).items()}  # at the data mean
        n, table = auto_steps(lambda s: infer_for(policy, s, None, args.backend, run)(0), example, config.deadline,
                              args.margin_ms / 1e3, steps=policy.objective.sweep_inference_steps())
        out["auto"] = {"chosen_steps": n, "deadline_ms": config.deadline * 1e3, "margin_ms": args.margin_ms,
                       "latency_ms": {str(s): {"p50": r["p50_s"] * 1e3, "p99": r["q_s"] * 1e3} for s, r in table.items()}}
        row(f"{policy.objective.kind}@auto({n})", policy, run, n, None, args.backend)
    if args.baseline:
        dp, drun = cli.load_policy(args, args.baseline)
        if "ddpm" not in dp.objective.samplers:
            raise SystemExit(f"--baseline {args.baseline} holds a {dp.objective.kind!r} policy, not a DDPM-trained one")
        row(f"ddpm@{dp.objective.num_train_timesteps}", dp, drun, dp.objective.num_train_timesteps, "ddpm", "eager")
        row("ddim@10", dp, drun, 10, "ddim", "eager")
    print(format_rows(out["rows"]))
    if args.out:
        write_result(args.out, result_doc("deploy", task.name, "deploy_sim", steps_table(out["rows"], policy.objective.kind),
                                          **out))
