"""Training cost per optimizer step (loss, backward, AdamW) of one network on one batch stream, in one
process so the numbers compare: each objective against flow matching, and each precision (fp32, bf16
autocast, bf16 + torch.compile) against fp32, on the CPU or a GPU.

    python scripts/objective_cost.py --threads 1 --out docs/results/pusht_lowdim/training/objective_cost.json
    python scripts/bench_precision.py --device cuda --out $OUT/precision.json      # Diffusion Policy's UNet
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

KINDS = ("flow", "shortcut", "meanflow", "ddpm")
PRECISION_VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
                      "bf16+compile": {"precision": "bf16", "compile": True}}


def step_times(dataset, variants: dict[str, dict[str, Any]] | None = None, net: str = "unet1d_small",
               net_kwargs: dict[str, Any] | None = None, batch_size: int = 64, steps: int = 30, warmup: int = 3,
               rounds: int = 3, seed: int = 0, device: str | torch.device = "cpu",
               baseline: str | None = None) -> dict[str, Any]:
    """Median ms per optimizer step of each variant on the same batches. A variant is
    ``{"objective": kind, "precision": "fp32" | "bf16", "compile": bool}`` (defaults shortcut, fp32, no
    compile), run through the training loop's own ``autocast`` and ``compiled``; the default variants
    are the objectives (``KINDS``). Variants are timed in interleaved rounds so a slow spell of the
    machine does not land on one of them; compilation happens in the warm-up steps."""
    from ..latency import torch_sync
    from ..policy import PolicyConfig, ShortcutPolicy
    from .loop import _LossModule, _to_device, autocast, compiled, make_optimizer

    device = torch.device(device)
    sync = torch_sync(device) or (lambda: None)
    variants = variants or {k: {"objective": k} for k in KINDS}
    g = torch.Generator().manual_seed(seed)
    batches = [_to_device(dataset.get_batch(torch.randint(len(dataset), (batch_size,), generator=g).tolist()), device)
               for _ in range(4)]
    runs = {}
    for name, v in variants.items():
        torch.manual_seed(seed)
        p = ShortcutPolicy(PolicyConfig(shape_meta=dataset.shape_meta.to_dict(), net=net, net_kwargs=net_kwargs or {},
                                        objective={"kind": v.get("objective", "shortcut")}))
        p.normalizer.load_state_dict(dataset.get_normalizer().state_dict())
        p.to(device).train()
        runs[name] = (p, compiled(_LossModule(p), bool(v.get("compile", False))),
                      make_optimizer(p, device, lr=1e-4), v.get("precision", "fp32"))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, (p, loss_fn, opt, precision) in runs.items():
            for i in range(warmup + steps):
                sync()
                t0 = time.perf_counter()
                with autocast(device, precision):
                    loss, _ = loss_fn(batches[i % len(batches)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {k: 1e3 * float(torch.tensor(v).median()) for k, v in times.items()}
    base = med.get(baseline or next(iter(med)))
    n_params = sum(x.numel() for x in next(iter(runs.values()))[0].parameters())
    return {"ms_per_step": med, f"ratio_to_{baseline or next(iter(med))}": {k: v / base for k, v in med.items()},
            "variants": variants, "batch_size": batch_size, "net": net, "net_kwargs": net_kwargs or {},
            "parameters": n_params, "steps_timed": steps * rounds, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads()}


def _pusht_lowdim(path: str):
    from ..data.dataset import SequenceDataset

    return SequenceDataset(path, {"keypoint": "keypoint", "agent_pos": {"key": "state", "index": [0, 2]}})


def main(argv: list[str] | None = None) -> None:
    from .. import cli
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
    res = step_times(_pusht_lowdim(args.data), net=args.net, batch_size=args.batch_size, steps=args.steps,
                     baseline="flow")
    for k, v in res["ms_per_step"].items():
        print(f"{k:9s} {v:7.1f} ms per step  ({res['ratio_to_flow'][k]:.2f}x flow matching)")
    if args.out:
        write_result(args.out, result_doc("training", "pusht_lowdim", "objective-cost", {}, **res,
                                          about="training cost per optimizer step of each objective, one network"))


if __name__ == "__main__":
    main()


PRECISION_DOC = """Training step time of one policy in fp32, bf16 autocast and bf16 + torch.compile (the training
loop's ``train.precision`` and ``train.compile``), shortcut objective, PushT low-dim batches, Diffusion
Policy's UNet (down_dims 256/512/1024) by default. Meant for a GPU; on a CPU bf16 is emulated unless the
CPU has bf16 units, so the figure says little there. Writes a results file.

    python scripts/bench_precision.py --device cuda --batch-size 256 --out $OUT/precision.json
    python scripts/bench_precision.py --device cpu --net unet1d_small --batch-size 16 --steps 3 --no-compile
"""


def precision_main(argv: list[str] | None = None) -> None:
    from .. import cli
    from ..results import result_doc, write_result
    from ..utils import resolve_device

    ap = cli.parser(PRECISION_DOC, "bench_precision")
    ap.add_argument("--data", default="pkg://shortcut_policy.datasets/pusht_lowdim.zarr")
    ap.add_argument("--net", default="unet1d", help="unet1d: Diffusion Policy's size (configs/policy/unet1d.yaml)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    net_kwargs = {"down_dims": [256, 512, 1024], "kernel_size": 5, "n_groups": 8} if args.net == "unet1d" else {}
    variants = {k: v for k, v in PRECISION_VARIANTS.items() if not (args.no_compile and v.get("compile"))}
    res = step_times(_pusht_lowdim(args.data), variants, net=args.net, net_kwargs=net_kwargs,
                     batch_size=args.batch_size, steps=args.steps, rounds=args.rounds, device=device, baseline="fp32")
    for k, v in res["ms_per_step"].items():
        print(f"{k:13s} {v:8.2f} ms per step  ({res['ratio_to_fp32'][k]:.2f}x fp32)  {res['device_name']}")
    if args.out:
        write_result(args.out, result_doc("training", "pusht_lowdim", "precision", {}, **res,
                                          about="training step time: fp32, bf16 autocast, bf16 + torch.compile"))


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
        ddp_cmd = [torchrun, "--standalone", f"--nproc_per_node={n}", "-m", "shortcut_policy.train",
                   f"out_dir={tmp / 'ddp'}", "train.num_threads=1", *common]
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default; set so it does not warn
        ddp = _run_samples_per_s(ddp_cmd, tmp / "ddp", args.batch_size)
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
