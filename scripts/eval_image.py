"""Evaluate an image model: Frechet distance in the evaluator classifier's feature space (not FID: no
Inception weights here) and the classifier's accuracy on class-conditional samples, at each step count.

    python scripts/train_image_classifier.py --out runs/mnist-classifier/classifier.pt
    python scripts/eval_image.py --checkpoint runs/mnist-shortcut/checkpoints/latest.pt \
        --classifier runs/mnist-classifier/classifier.pt --n-samples 1000 --out docs/results/mnist-shortcut.json

Writes the results JSON (benchmarks format: task, method, command, machine, date, train_steps, steps) and
re-plots every <task>-*.json beside it into <dir>/<task>.png (FD and accuracy vs steps, one line per method).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shortcut_policy.image.data import load_mnist, make_image_dataset
from shortcut_policy.image.eval import evaluate_image_model, load_classifier, plot_results
from shortcut_policy.image.run import load_image_model
from shortcut_policy.train.run import training_command
from shortcut_policy.utils import provenance



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--data", default=None,
                    help="MNIST npz with the test images for FD (and train images for the floor); default: the "
                         "data the model was trained on (its run config's image_data, test split)")
    ap.add_argument("--task", default="mnist", help="task name of the results file")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the training scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default=None, help="default: the objective kind (shortcut / flow)")
    ap.add_argument("--machine", default=None, help="default: this machine's description")
    ap.add_argument("--date", default=None)
    ap.add_argument("--out", default=None, help="default: docs/results/mnist-<method>.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, run = load_image_model(args.checkpoint)
    clf, clf_info = load_classifier(args.classifier)
    if args.data is not None:
        test, train = load_mnist(args.data, "test"), load_mnist(args.data, "train", limit=args.n_samples)
    else:
        data = {**run["image_data"], "limit": None}
        test = make_image_dataset(data, "test")
        train = make_image_dataset({**data, "limit": args.n_samples}, "train")
    method = args.method or model.cfg.objective.kind
    res = evaluate_image_model(model, clf, test, args.steps, n_samples=args.n_samples, seed=args.seed,
                               cfg_scale=args.cfg_scale, real=train)
    prov = provenance()
    out = Path(args.out or f"docs/results/{args.task}-{method}.json")
    doc = {"task": args.task, "method": method, "command": prov["command"],
           "machine": args.machine or prov["machine"], "date": args.date or prov["date"],
           "train_steps": run["checkpoint"]["step"], "train_command": training_command(args.checkpoint, run),
           "n_samples": args.n_samples, "sample_seed": args.seed,
           "cfg_scale": model.cfg.cfg_scale if args.cfg_scale is None else args.cfg_scale,
           "guidance": "only at the flow level d = 1/M (M steps; every step for flow matching)",
           "metric": "Frechet distance in the penultimate features of the evaluator CNN (not FID) vs the "
                     f"{len(test)} test images; accuracy = evaluator's agreement with the requested class",
           "classifier_test_accuracy": clf_info["test_accuracy"], "real_fd": res.get("real_fd"),
           "steps": res["steps"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    results = {}
    for p in sorted(out.parent.glob(f"{args.task}-*.json")):
        d = json.loads(p.read_text())
        if d.get("task") == args.task and d.get("steps"):
            results[d["method"]] = d
    print(f"wrote {plot_results(results, out.parent / f'{args.task}.png')}")


if __name__ == "__main__":
    main()
