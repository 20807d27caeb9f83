"""Evaluation entry points: the step-count evaluation of a checkpoint (``shortcut-eval``), offline
diagnostics, paired comparisons, the results report and final training losses. Flags follow
``shortcut_policy.cli``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import cli
from ..results import ResultError, merge_results, read_result, result_doc, select_steps, write_result

EVAL_DOC = """Evaluate a checkpoint at several numbers of network calls per action chunk: in closed loop on fixed
seeds when its task has a simulator, offline on the validation episodes (action error against the
demonstrations) when it has none. Writes a results file (kind "sweep" or "offline") and a plot.

    shortcut-eval --checkpoint runs/X/checkpoints/latest.pt --out runs/X/eval.json
    shortcut-eval --checkpoint runs/X/checkpoints/latest.pt --num-inference-steps 1 2 4 --episodes 200
    shortcut-eval --checkpoint runs/D/checkpoints/latest.pt --sampler ddim --num-inference-steps 1 2 4 10
    shortcut-eval --checkpoint runs/X/checkpoints/latest.pt --videos 3 --out runs/X/eval.json   # H.264 mp4s
"""


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(EVAL_DOC, "shortcut-eval")
    cli.add_policy_args(ap)
    cli.add_calls_arg(ap, "default: the objective's sweep, 1 2 4 ... up to its max_inference_steps; DDPM: the "
                          "divisors of its timesteps")
    ap.add_argument("--sampler", default=None, help="one of the checkpoint's samplers (DDPM-trained: ddpm or ddim)")
    ap.add_argument("--episodes", type=int, default=50, help="closed-loop episodes (offline: 5x as many windows)")
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--method", default=None, help="name in the results file (default: the sampler)")
    ap.add_argument("--out", default=None, help="results JSON path (plot beside it)")
    ap.add_argument("--latency-iters", type=int, default=50)
    ap.add_argument("--n-action-steps", type=int, default=None,
                    help="actions executed per chunk before the next prediction (default: the checkpoint's)")
    ap.add_argument("--videos", type=int, default=0, help="record this many episodes per step count (H.264 mp4)")
    ap.add_argument("--video-dir", default=None, help="where videos go (default: <out without .json>-videos)")
    ap.add_argument("--max-envs", type=int, default=None,
                    help="at most this many envs at once (default: the task's env.max_envs, else one per episode)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="add to an existing --out file of the same checkpoint: these counts on its seeds, or these "
                         "episodes on the seeds right after (or before) its range, at its counts")
    args = ap.parse_args(argv)
    if args.merge and not args.out:
        raise SystemExit("--merge needs --out (the results file to add to)")
    if args.videos and not (args.out or args.video_dir):
        raise SystemExit("--videos needs --out or --video-dir: where should the videos go?")
    if args.videos < 0:
        raise SystemExit(f"--videos must be >= 0, got {args.videos}")

    import torch

    from ..task import TaskConfig, make_dataset, make_runner
    from ..train.run import training_command
    from .offline import format_offline_table, offline_eval
    from .sweep import format_table, plot_sweeps, sweep

    policy, run = cli.load_policy(args)
    sampler = cli.check_sampler(policy, args.sampler)
    counts = cli.calls_for(policy, args.num_inference_steps, sampler)
    task_cfg = dict(run["task"])
    if args.n_action_steps is not None:
        try:
            policy.set_n_action_steps(args.n_action_steps)
        except ValueError as e:
            raise SystemExit(f"--n-action-steps {args.n_action_steps}: {e}") from None
        task_cfg["n_action_steps"] = args.n_action_steps
    task = TaskConfig.from_dict(task_cfg)
    train_step = run["checkpoint"]["step"]
    if task.simulated:
        runner = make_runner(task, policy.shape_meta, n_episodes=args.episodes, seed_start=args.seed_start,
                             max_envs=args.max_envs)
        print(f"evaluating {args.checkpoint} ({sampler}, trained {train_step} steps) on {task.name}, "
              f"{args.episodes} episodes from seed {args.seed_start}")
        video_dir = args.video_dir or (str(Path(args.out).with_suffix("")) + "-videos" if args.videos else None)
        res = sweep(policy, runner, counts, latency_iters=args.latency_iters, progress=not args.no_progress,
                    video_dir=video_dir, n_videos=args.videos, sampler=sampler)
        kind = "sweep"
    else:
        val = make_dataset(task).get_validation_dataset()
        print(f"evaluating {args.checkpoint} ({sampler}, trained {train_step} steps) offline on {task.name}'s "
              f"validation episodes ({task.name} has no simulator)")
        res = offline_eval(policy, val, counts, n_windows=5 * args.episodes, sampler=sampler)
        kind = "offline"
    result = result_doc(kind, task.name, args.method or sampler, res.pop("steps"), **res,
                        train_steps=train_step, train_command=training_command(args.checkpoint, run),
                        checkpoint=str(args.checkpoint), weights=args.weights, sampler=sampler,
                        objective=run["policy_config"]["objective"], net=run["policy_config"]["net"],
                        device=str(policy.device), torch_threads=torch.get_num_threads(),
                        n_action_steps=policy.cfg.n_action_steps)
    if args.merge and Path(args.out).exists():
        try:
            old = read_result(args.out)
            # a file from before the field was played with the checkpoint's own number of executed actions
            old.setdefault("n_action_steps", run["policy_config"]["n_action_steps"])
            result = merge_results(old, result)
        except ResultError as e:
            raise SystemExit(str(e)) from None
    print(format_table(result) if kind == "sweep" else format_offline_table(result))
    if args.out:
        write_result(args.out, result)
        if kind == "sweep":
            plot_sweeps({result["method"]: result}, str(Path(args.out).with_suffix(".png")),
                        title=f"{result['task']} {result['method']}: {result['command']} ({result['machine']}, "
                              f"{result['date']})")


DIAGNOSE_DOC = """Offline step-count diagnostics of one or more checkpoints on held-out demonstration windows (no
simulator): per number of calls, the distance to the finest sample of the same noise, the spread over
noise draws, the distance to the demonstrated chunk (mean and best of K), roughness and the share of
initial noise left (shortcut_policy/eval/consistency.py).

    python scripts/diagnose.py --checkpoint runs/A/checkpoints/latest.pt runs/B/checkpoints/latest.pt \\
        --names A B --out docs/results/pusht_lowdim/diagnostics/AB.json
"""


def diagnose_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(DIAGNOSE_DOC)
    cli.add_policy_args(ap, several=True)
    ap.add_argument("--names", nargs="+", default=None)
    cli.add_calls_arg(ap, "default 1 2 4 8 16")
    ap.add_argument("--ref-steps", type=int, default=None,
                    help="reference number of calls (default: each checkpoint's max_inference_steps)")
    ap.add_argument("--windows", type=int, default=64, help="held-out windows (validation episodes)")
    ap.add_argument("--noise", type=int, default=8, help="noise draws per window")
    ap.add_argument("--split", choices=["val", "train"], default="val")
    ap.add_argument("--target-range", type=float, default=None, metavar="C",
                    help="also measure how often consistency targets leave [-C, C]")
    ap.add_argument("--meanflow-terms", action="store_true",
                    help="MeanFlow checkpoints: also measure how steep the network is in x, t and d (the identity's terms)")
    ap.add_argument("--velocity-error-by-step", action="store_true",
                    help="also measure, at each step of the --ref-steps sampler, its velocity's error against the flow-matching "
                         "target on the demonstrations' noise path: where along the path the network is least accurate "
                         "(give --ref-steps to compare objectives whose finest samplers differ on one sampler)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.names and len(args.names) != len(args.checkpoint):
        raise SystemExit(f"--names has {len(args.names)} entries for {len(args.checkpoint)} checkpoints")
    from ..task import TaskConfig, make_dataset
    from .consistency import (by_step_count, format_diagnostics, meanflow_terms, pick_windows,
                              plot_velocity_error_by_step, step_diagnostics, target_range, velocity_error_by_step)

    counts = args.num_inference_steps or [1, 2, 4, 8, 16]
    results, ranges, terms, by_step, windows, task = {}, {}, {}, {}, None, None
    for i, ckpt in enumerate(args.checkpoint):
        policy, run = cli.load_policy(args, ckpt)
        name = args.names[i] if args.names else f"{policy.objective.kind}:{ckpt}"
        if policy.objective.kind not in ("shortcut", "flow", "meanflow"):
            raise SystemExit(f"{ckpt}: diagnostics apply to flow, shortcut and MeanFlow checkpoints, not {policy.objective.kind!r}")
        if windows is None:
            task = run["task"]
            ds = make_dataset(TaskConfig.from_dict(task))
            windows = pick_windows(ds.get_validation_dataset() if args.split == "val" else ds, args.windows)
        elif run["task"].get("name") != task.get("name"):
            raise SystemExit(f"{ckpt} is a {run['task'].get('name')!r} policy; the first was {task.get('name')!r}")
        ref = args.ref_steps or policy.objective.max_steps
        results[name] = step_diagnostics(policy, windows, [n for n in counts if n <= ref], ref, args.noise)
        results[name]["checkpoint"] = str(ckpt)
        if args.target_range is not None:
            ranges[name] = target_range(policy, windows, args.target_range, args.noise)
        if args.meanflow_terms:
            terms[name] = meanflow_terms(policy, windows, args.noise)
            for where, row in terms[name].items():
                print(f"{name} {where}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
        if args.velocity_error_by_step:
            by_step[name] = velocity_error_by_step(policy, windows, ref, args.noise)
            print(f"{name} velocity error by step (t: error): "
                  + ", ".join(f"{r['t']:.3g}: {r['error']:.3g}" for r in by_step[name]))
    print(format_diagnostics(results))
    if args.out:
        write_result(args.out, result_doc(
            "diagnostics", task.get("name"), "diagnostics", by_step_count(results), split=args.split,
            windows=args.windows, n_noise=args.noise, ref_steps={n: r["ref_steps"] for n, r in results.items()},
            checkpoints={n: r["checkpoint"] for n, r in results.items()},
            demo_roughness={n: r["demo_roughness"] for n, r in results.items()},
            **({"target_range": ranges} if ranges else {}), **({"meanflow_terms": terms} if terms else {}),
            **({"velocity_error_by_step": by_step} if by_step else {})))
        if by_step:
            png = str(Path(args.out).with_suffix(".png"))
            plot_velocity_error_by_step(by_step, png, f"{task.get('name')}: each sampler step's velocity error on the "
                                        f"noise path, {args.windows} {args.split} windows x {args.noise} noise draws")
            print(f"wrote {png}")


FINALS_DOC = """Where closed-loop episodes ended (shortcut_policy/eval/finals.py): from evaluations that recorded
final states (shortcut-eval does on PushT), per method and number of calls the success share, the
failures' and the successes' median block position and angle errors, and which part of the pose the
failures miss; a scatter plot beside --out.

    python scripts/final_poses.py --results runs/finals/shortcut.json runs/finals/flow.json --names shortcut flow \
        --out docs/results/pusht_lowdim/diagnostics/final_poses.json
"""


def finals_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(FINALS_DOC)
    ap.add_argument("--results", nargs="+", required=True, help="sweep results files (shortcut-eval --out)")
    ap.add_argument("--names", nargs="+", default=None, help="one per file (default: each file's method)")
    cli.add_calls_arg(ap, "default: every count with final states")
    ap.add_argument("--out", default=None, help="summary JSON (kind finals); the plot goes beside it")
    args = ap.parse_args(argv)
    if args.names and len(args.names) != len(args.results):
        raise SystemExit(f"--names has {len(args.names)} entries for {len(args.results)} files")
    from .finals import collect, format_finals, plot_finals, summarize_finals

    try:
        docs = [read_result(p) for p in args.results]
        names = args.names or [d["method"] for d in docs]
        finals = collect(docs, names, args.num_inference_steps, sources=args.results)
    except ResultError as e:
        raise SystemExit(str(e)) from None
    summary = {m: {n: summarize_finals(f) for n, f in by_n.items()} for m, by_n in finals.items()}
    print(format_finals(summary))
    if args.out:
        steps: dict[str, dict[str, Any]] = {}
        for m, by_n in summary.items():
            for n, s in by_n.items():
                steps.setdefault(n, {})[m] = s
        doc = result_doc("finals", docs[0].get("task"), "final_poses", {n: steps[n] for n in sorted(steps, key=int)},
                         sources=dict(zip(names, args.results)),
                         seeds={m: d.get("seeds") for m, d in zip(names, docs)})
        write_result(args.out, doc)
        plot_finals(finals, str(Path(args.out).with_suffix(".png")),
                    title=f"{doc['task']}: final block pose per episode; {doc['command']} ({doc['machine']}, {doc['date']})")


COMPARE_DOC = """Paired comparison of two policies evaluated on the same episode seeds (shortcut_policy/eval/compare.py).

    python scripts/compare.py --a shortcut_s0.json shortcut_s1.json --b flow_s0.json flow_s1.json --names shortcut flow
    python scripts/compare.py --a s0.json --b ddpm.json --num-inference-steps 1 --b-steps 100   # 1 call vs DDPM-100

Per number of calls: both means, the mean per-episode difference (a - b) with its standard error over
episodes, episodes won; with two or more training seeds per side also the standard error over seeds,
a Welch t 95% interval and p-value. ``--out`` writes a results file (kind "comparison"), ``--plot`` a plot.
"""


def compare_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(COMPARE_DOC)
    ap.add_argument("--a", nargs="+", required=True, help="results files of side a (one per training seed)")
    ap.add_argument("--b", nargs="+", required=True, help="results files of side b")
    ap.add_argument("--names", nargs=2, default=None, help="column names (default: the files' methods)")
    cli.add_calls_arg(ap, "default: every count present on both sides")
    ap.add_argument("--b-steps", type=int, default=None, help="side b at this one count against each of a's")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="PNG: score per training seed vs calls, and the difference")
    args = ap.parse_args(argv)
    from ..utils import today
    from .compare import format_comparison, paired_difference, plot_comparison

    try:
        a, b = [read_result(p) for p in args.a], [read_result(p) for p in args.b]
    except ResultError as e:
        raise SystemExit(str(e)) from None
    names = args.names or [a[0].get("method", "a"), b[0].get("method", "b")]
    counts = args.num_inference_steps or sorted(map(int, set.intersection(
        *[set(r["steps"]) for r in (a if args.b_steps else [*a, *b])])))
    if not counts:
        raise SystemExit("the two sides share no number of calls")
    try:
        rows = [paired_difference(a, b, n, b_steps=args.b_steps) for n in counts]
    except (KeyError, ValueError) as e:
        raise SystemExit(str(e.args[0] if e.args else e)) from None
    print(format_comparison(rows, *names))
    if args.out:
        write_result(args.out, result_doc("comparison", a[0].get("task"), f"compare:{names[0]}-vs-{names[1]}",
                                          {str(r["steps"]): r for r in rows}, a=args.a, b=args.b, names=names,
                                          episodes=rows[0]["episodes"], seeds=rows[0]["episode_seeds"]))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_comparison(rows, *names, args.plot, title=f"{a[0].get('task', '')}: {names[0]} vs {names[1]}, "
                        f"{rows[0]['episodes']} paired episodes; {today()}")
        print(f"wrote {args.plot}")


MERGE_DOC = """Merge results files of one checkpoint (shortcut_policy/results.py merge_results): step counts
evaluated on the same seeds, and shards of episodes evaluated on adjacent seed ranges (at the same counts,
on one machine or several), into one file.

    python scripts/merge_results.py runs/X/eval-c1.json runs/X/eval-c16.json --out runs/X/eval.json
    python scripts/merge_results.py runs/X/seeds0-199.json runs/X/seeds200-499.json --out runs/X/eval500.json
    python scripts/merge_results.py runs/X/c1-c2_0-99.json runs/X/c1_100-499.json --steps 1 --out runs/X/c1_500.json
"""


def merge_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(MERGE_DOC)
    ap.add_argument("files", nargs="+", help="results files, merged in this order (episode shards in any order)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=None, metavar="N",
                    help="keep only these numbers of network calls from every file (each must have them), e.g. to "
                         "join a 1-and-2-call evaluation with a 1-call shard; the others are named in dropped_steps")
    args = ap.parse_args(argv)
    if len(args.files) < 2:
        raise SystemExit("merge needs two or more results files")
    from .sweep import format_table
    try:
        docs = [read_result(p) for p in args.files]
        if args.steps:
            docs = [select_steps(d, args.steps, p) for p, d in zip(args.files, docs)]
    except ResultError as e:
        raise SystemExit(str(e)) from None
    merged = docs[0]
    for path, d in zip(args.files[1:], docs[1:]):
        try:
            merged = merge_results(merged, d)
        except ResultError as e:
            raise SystemExit(f"{path}: {e}") from None
    if merged["kind"] == "sweep":
        print(format_table(merged))
    write_result(args.out, merged)


LOSSES_DOC = """Final training losses of one or more runs, from their metrics.jsonl, as a results file (kind "losses");
with --curve, one logged loss over the whole training of each run too, in the file and as a plot beside it.

    python scripts/losses.py --runs runs/A runs/B --last 5 --out docs/results/pusht_lowdim/recipe/train-losses.json
    python scripts/losses.py --runs runs/A runs/B --curve train/loss_interval --out losses.json   # + losses.png
"""


def losses_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(LOSSES_DOC)
    ap.add_argument("--runs", nargs="+", required=True, help="run directories (out_dir of a training run)")
    ap.add_argument("--last", type=int, default=5, help="how many of the last logged values to average")
    ap.add_argument("--task", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--curve", default=None, metavar="KEY",
                    help="also keep this logged value (e.g. train/loss_interval) at every logged step of each run "
                         "(the file's 'curves') and plot it on a log scale beside --out (.png)")
    args = ap.parse_args(argv)
    runs, curves = {}, {}
    for d in args.runs:
        path = Path(d) / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"no metrics.jsonl in {d}")
        logged = [r for r in map(json.loads, path.read_text().splitlines()) if "train/loss" in r]
        rows = logged[-args.last:]
        if not rows:
            raise SystemExit(f"{path}: no train/loss entries")
        keys = sorted({k for r in rows for k in r if k.startswith("train/loss")})
        runs[Path(d).name] = {"steps": [rows[0]["step"], rows[-1]["step"]],
                              **{k.split("/", 1)[1]: sum(r[k] for r in rows) / len(rows) for k in keys}}
        print(Path(d).name, {k: round(v, 6) if isinstance(v, float) else v for k, v in runs[Path(d).name].items()})
        if args.curve:
            points = [[r["step"], r[args.curve]] for r in logged if args.curve in r]
            if not points:
                raise SystemExit(f"{path}: no {args.curve} entries (logged: {keys})")
            curves[Path(d).name] = points
    if args.out:
        extra = {"curve": args.curve, "curves": curves} if args.curve else {}
        write_result(args.out, result_doc("losses", args.task, "train-losses", {}, last=args.last, runs=runs, **extra))
        if args.curve:
            plot_curves(curves, args.curve, str(Path(args.out).with_suffix(".png")))


def plot_curves(curves: dict[str, list[list[float]]], key: str, path: str) -> None:
    """One logged value over training steps, one line per run, on a log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
