"""Training cost of each objective on one network and one batch stream, in one process (so the numbers
compare): milliseconds per optimizer step (loss, backward, AdamW) and the ratio to flow matching.

    python scripts/objective_cost.py --threads 1 --out docs/results/pusht_lowdim/training/objective_cost.json
"""
from __future__ import annotations

import time
from pathlib import Path
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
        write_result(args.out, result_doc("training", "pusht_lowdim", "objective-cost", {}, **res,
                                          about="training cost per optimizer step of each objective, one network"))


if __name__ == "__main__":
    main()


PROCESSES_DOC = """Training samples/s of one process against several (torchrun, DistributedDataParallel over gloo on
a CPU) at the same global batch, with the machine's cores shared out: one process with N threads
against N processes with one thread each. Writes a results file.

    python scripts/bench_processes.py --out docs/results/pusht_lowdim/training/processes.json
"""


def _run_samples_per_s(cmd: list[str], out_dir: Path, batch_size: int) -> float:
    import json
    import subprocess

    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rates = [json.loads(line).get("train/steps_per_s") for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r][1:]  # the first interval holds start-up
    if not rates:
        raise RuntimeError(f"{out_dir}/metrics.jsonl: no train/steps_per_s after the first interval; raise --steps")
    return batch_size * float(torch.tensor(rates).median())


def processes_main(argv: list[str] | None = None) -> None:
    import os
    import shutil
    import sys
    import tempfile

    from .. import cli
    from ..results import result_doc, write_result

    ap = cli.parser(PROCESSES_DOC, "bench_processes")
    ap.add_argument("--processes", type=int, default=2, help="N: processes in the torchrun job and threads of the single one")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=None)
    args, overrides = ap.parse_known_args(argv)
    n = args.processes
    common = [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.log_every=50",
              "train.val_every=100000", "train.ckpt_every=100000", "train.progress=false", *overrides]
    tmp = Path(tempfile.mkdtemp(prefix="bench_processes_"))
    try:
        one = _run_samples_per_s([sys.executable, "-m", "shortcut_policy.train", f"out_dir={tmp / 'one'}",
                                  f"train.num_threads={n}", *common], tmp / "one", args.batch_size)
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        env_cmd = [torchrun, "--standalone", f"--nproc_per_node={n}", "-m", "shortcut_policy.train",
                   f"out_dir={tmp / 'ddp'}", "train.num_threads=1", *common]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        ddp = _run_samples_per_s(env_cmd, tmp / "ddp", args.batch_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"1 process x {n} threads: {one:7.1f} samples/s\n{n} processes x 1 thread: {ddp:7.1f} samples/s "
          f"({ddp / one:.2f}x)")
    if args.out:
        write_result(args.out, result_doc("training", "pusht_lowdim", "processes", {}, batch_size=args.batch_size,
                                          train_steps=args.steps, overrides=overrides,
                                          samples_per_s={"1x%d_threads" % n: one, "%dx1_thread" % n: ddp},
                                          ratio=ddp / one,
                                          about="training samples/s, one process against torchrun DDP (gloo)"))
