"""Train an image model (DiT on MNIST by default): the same command as `shortcut-train-image`.

    python scripts/train_image.py                            # shortcut, tiny DiT, data/mnist.npz
    python scripts/train_image.py objective=flow_image       # the flow-matching baseline
"""
from shortcut_policy.image.cli import train_main

if __name__ == "__main__":
    train_main()
