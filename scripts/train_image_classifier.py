"""Train the evaluator's small CNN classifier on the image data (a few minutes on a CPU).

    python scripts/train_image_classifier.py --out runs/mnist-classifier/classifier.pt
    python scripts/train_image_classifier.py --data /path/to/mnist.npz --epochs 3
"""
from __future__ import annotations

import argparse

import torch

from shortcut_policy.image.data import load_mnist
from shortcut_policy.image.eval import save_classifier, train_classifier
from shortcut_policy.utils import provenance



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/mnist.npz",
                    help="MNIST npz (x_train, y_train, x_test, y_test): datasets/download_mnist.py writes it")
    ap.add_argument("--out", default="runs/mnist-classifier/classifier.pt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_mnist(args.data, "train"), load_mnist(args.data, "test")
    clf, acc = train_classifier(train, test, epochs=args.epochs, seed=args.seed)
    path = save_classifier(args.out, clf, acc, {"data": args.data, "epochs": args.epochs, **provenance()})
    print(f"classifier test accuracy {acc:.4f} ({len(test)} test images); saved {path}")


if __name__ == "__main__":
    main()
