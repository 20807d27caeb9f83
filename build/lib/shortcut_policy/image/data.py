"""Image datasets: (C, H, W) float32 images in [-1, 1] with integer labels.

Three sources, all checked up front with errors that name the problem:
- ``mnist``: the MNIST npz (keys x_train, y_train, x_test, y_test; uint8 images (N, 28, 28));
- ``npz``: any npz with named image and label keys, images (N, H, W), (N, H, W, C) or (N, C, H, W),
  uint8 in 0..255 or float in [0, 1];
- ``folder``: a folder of image files whose subfolder names are the classes (sorted -> 0..K-1).
Nothing is unpickled: ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# the shared data folder beside the repository (../shared/data), the default MNIST location


class ImageDataError(ValueError):
    """An image dataset is missing, malformed or of the wrong shape (the message names the file and key)."""
    pass


def to_chw_float(images: np.ndarray, what: str, channels: int | None = None) -> np.ndarray:
    """(N, H, W) / (N, H, W, C) / (N, C, H, W) uint8 or [0, 1] floats -> (N, C, H, W) float32 in [-1, 1].

    A trailing axis of size 1, 3 or 4 is read as channels-last, a second axis of that size as
    channels-first (channels-last wins for ambiguous tiny images, as image files store them).
    """
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
        elif a.shape[1] not in (1, 3, 4):
            raise ImageDataError(f"{what}: cannot tell the channel axis of shape {images.shape}; "
                                 "expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4")
    else:
        raise ImageDataError(f"{what}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), "
                             f"got {images.shape}")
    if a.shape[0] == 0:
        raise ImageDataError(f"{what}: no images (shape {images.shape})")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageDataError(f"{what}: images contain NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ImageDataError(f"{what}: float images must be in [0, 1] (got range {lo:.3g}..{hi:.3g}); "
                                 "store uint8 0..255 or rescale")
        x = a.astype(np.float32) * 2.0 - 1.0
    else:
        raise ImageDataError(f"{what}: images must be uint8 or float, got dtype {a.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ImageDataError(f"{what}: expected {channels} channel(s), got images of shape {x.shape}")
    return np.ascontiguousarray(x)


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise ImageDataError(f"{what}: labels must have shape ({n},) to match the images, got {labels.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ImageDataError(f"{what}: labels must be integers (got non-integer floats or NaN)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ImageDataError(f"{what}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise ImageDataError(f"{what}: labels must be >= 0, got minimum {y.min()}")
    return y


class ImageDataset(Dataset):
    """In-memory images (N, C, H, W) in [-1, 1] and labels (N,); items {"image", "label"}."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None, name: str = "images"):
        if images.ndim != 4:
            raise ImageDataError(f"{name}: ImageDataset needs (N, C, H, W) images, got {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.labels = torch.from_numpy(_check_labels(labels, images.shape[0], name))
        self.num_classes = int(self.labels.max()) + 1 if num_classes is None else int(num_classes)
        if len(self.labels) and self.labels.max() >= self.num_classes:
            raise ImageDataError(f"{name}: label {int(self.labels.max())} >= num_classes {self.num_classes}")
        self.name = name

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}

    def subset(self, n: int | None) -> "ImageDataset":
        """The first ``n`` examples (all for None)."""
        if n is None or n >= len(self):
            return self
        return ImageDataset(self.images[:n].numpy(), self.labels[:n].numpy(), self.num_classes, self.name)


def _open_npz(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image data file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refuse
        raise ImageDataError(f"{path}: cannot read without unpickling ({e}); store plain numeric arrays") from e
    except Exception as e:
        raise ImageDataError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from e


def load_npz(path: str | Path, image_key: str, label_key: str, num_classes: int | None = None,
             channels: int | None = None, limit: int | None = None) -> ImageDataset:
    """Images and labels stored under named keys of an npz file."""
    f = _open_npz(path)
    with f:
        missing = [k for k in (image_key, label_key) if k not in f.files]
        if missing:
            raise ImageDataError(f"{path}: missing key(s) {missing}; the file holds {sorted(f.files)}")
        try:
            images, labels = f[image_key], f[label_key]
        except ValueError as e:  # object arrays would need unpickling: refuse
            raise ImageDataError(f"{path}: cannot read {image_key!r}/{label_key!r} without unpickling ({e}); "
                                 "store plain numeric arrays") from e
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    what = f"{path}[{image_key!r}]"
    x = to_chw_float(images, what, channels)
    return ImageDataset(x, _check_labels(labels, x.shape[0], f"{path}[{label_key!r}]"), num_classes, what)


def load_mnist(path: str | Path | None, split: str = "train", limit: int | None = None) -> ImageDataset:
    """MNIST from its npz (``datasets/download_mnist.py`` writes one): split "train" (60000) or "test"
    (10000), 1 x 28 x 28, 10 classes."""
    if split not in ("train", "test"):
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"MNIST not found at {path}; fetch it once with "
                                "`python datasets/download_mnist.py --out data/mnist.npz` and pass that path "
                                "(image_data.path=... / --data ...)")
    ds = load_npz(path, f"x_{split}", f"y_{split}", num_classes=10, channels=1, limit=limit)
    if ds.shape != (1, 28, 28):
        raise ImageDataError(f"{path}: MNIST images must be 28x28, got {ds.shape}")
    return ds


def _read_image(path: Path) -> np.ndarray:
    """One image file -> (H, W, C) uint8 (PIL when installed, else matplotlib's PNG reader)."""
    try:
        from PIL import Image
    except ImportError:  # matplotlib reads PNG without PIL
        if path.suffix.lower() != ".png":
            raise ImageDataError(f"{path}: reading {path.suffix} files needs Pillow (pip install pillow)")
        import matplotlib.image as mpimg

        a = mpimg.imread(str(path))
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.dtype != np.uint8 else a
    else:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "I", "I;16") else im.convert("RGB"))
    if a.ndim == 2:
        a = a[:, :, None]
    return a


def load_folder(root: str | Path, channels: int | None = None, limit: int | None = None) -> ImageDataset:
    """A folder of class subfolders (class index = position of the subfolder name in sorted order).

    Every image must have the same size and channel count.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageDataError(f"{root}: no class subfolders (expected {root}/<class name>/<image files>)")
    files, labels = [], []
    for k, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
                labels.append(k)
    if not files:
        raise ImageDataError(f"{root}: the class subfolders {classes} hold no image files ({', '.join(IMAGE_SUFFIXES)})")
    if limit is not None:
        files, labels = files[:limit], labels[:limit]
    arrays = [_read_image(p) for p in files]
    shape0 = arrays[0].shape
    for p, a in zip(files, arrays):
        if a.shape != shape0:
            raise ImageDataError(f"{root}: images differ in size: {files[0]} is {shape0}, {p} is {a.shape} (H, W, C)")
    x = to_chw_float(np.stack(arrays), str(root), channels)
    ds = ImageDataset(x, np.asarray(labels), num_classes=len(classes), name=str(root))
    ds.class_names = classes
    return ds


def make_image_dataset(data: dict[str, Any], split: str = "train") -> ImageDataset:
    """Build a dataset from the run config's ``image_data`` group.

    kinds: {"kind": "mnist", "path"}; {"kind": "npz", "path", "image_key", "label_key"
    (test split: "test_image_key", "test_label_key")}; {"kind": "folder", "path" (test split: "test_path")}.
    Optional "limit": at most this many examples.
    """
    kind = data.get("kind")
    limit = data.get("limit")
    if kind == "mnist":
        return load_mnist(data.get("path"), split, limit)
    if kind == "npz":
        ik, lk = (data["image_key"], data["label_key"]) if split == "train" else (
            data.get("test_image_key"), data.get("test_label_key"))
        if ik is None or lk is None:
            raise ImageDataError(f"image_data kind=npz needs {'test_' if split != 'train' else ''}image_key and "
                                 f"{'test_' if split != 'train' else ''}label_key for the {split} split")
        return load_npz(data["path"], ik, lk, data.get("num_classes"), limit=limit)
    if kind == "folder":
        path = data["path"] if split == "train" else data.get("test_path")
        if path is None:
            raise ImageDataError("image_data kind=folder needs test_path for the test split")
        return load_folder(path, limit=limit)
    raise ValueError(f"image_data.kind must be 'mnist', 'npz' or 'folder', got {kind!r}")
