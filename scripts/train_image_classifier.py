"""Train the evaluator CNN classifier of the image metrics (a few minutes on a CPU).

    python scripts/train_image_classifier.py --data data/mnist.npz --out runs/mnist-classifier/classifier.pt
"""
from shortcut_policy.image.cli import classifier_main

if __name__ == "__main__":
    classifier_main()
