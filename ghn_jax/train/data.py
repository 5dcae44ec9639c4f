"""Image-classification data for ghn_jax: in-memory arrays and a numpy batch iterator.

Sources:

* Fashion-MNIST from the Debian package `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist/*-ubyte.gz), read by a small IDX parser:
  works offline, no TensorFlow, no download.
* Any tfds image dataset with 'image' and 'label' features (cifar10,
  imagenet2012, ...) through `tfds.data_source`, which reads prepared
  ArrayRecord files without TensorFlow. Nothing is ever downloaded here;
  tests use `tfds.testing.mock_data`.
* A tiny learnable synthetic dataset for tests.

`load_dataset` returns (images NHWC float32 in [0, 1], labels int32).
`batch_iterator` is deterministic given its seed: per-epoch shuffling, drop
remainder, per-channel normalisation and optional CIFAR-style augmentation
(4-pixel zero-pad random crop + horizontal flip), all in numpy.
"""

from __future__ import annotations

import gzip
import os
from typing import Iterator, Sequence

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"

# Per-channel mean and std of the training images in [0, 1].
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ---------------------------------------------------------------------------
# IDX files (MNIST / Fashion-MNIST format).
# ---------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for shape {dims}, got {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return None


def load_fashion_mnist(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST 'train' (60k) or 'test' (10k) from IDX files, as (N, 28, 28, 1) in [0, 1]."""
    data_dir = data_dir or FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Unsupported Fashion-MNIST split: {split!r}; use 'train' or 'test'")
    img_path = _find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files for split {split!r} not found in {data_dir}. "
            f"Install the Debian package '{FASHION_MNIST_APT_PACKAGE}' "
            f"(apt-get install {FASHION_MNIST_APT_PACKAGE}) or pass data_dir= a folder with "
            f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]."
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"inconsistent IDX shapes: images {images.shape}, labels {labels.shape}")
    return (images[..., None].astype(np.float32) / 255.0), labels.astype(np.int32)


# ---------------------------------------------------------------------------
# tfds data sources (TensorFlow-free reading of prepared ArrayRecord data).
# ---------------------------------------------------------------------------


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` (bilinear) and crops the centre square."""
    from PIL import Image  # Pillow ships with matplotlib.

    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = out[top : top + size, left : left + size]
    return out[..., None] if squeeze else out


def load_tfds(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    image_size: int | None = None,
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a prepared tfds image dataset into memory through `tfds.data_source`.

    Images of varying size (imagenet2012) need `image_size`; `max_examples`
    keeps the first examples only (ImageNet does not fit in memory).
    """
    import tensorflow_datasets as tfds

    try:
        # builder(...).as_data_source avoids data_dir lookup issues of tfds.data_source.
        source = tfds.builder(name, data_dir=data_dir).as_data_source(split=split)
    except Exception as e:  # tfds raises several types for missing data.
        raise FileNotFoundError(
            f"tfds dataset {name!r} split {split!r} is not prepared in data_dir={data_dir!r} "
            f"(ArrayRecord format is needed; this library never downloads). Cause: {e}"
        ) from e
    n = len(source) if max_examples is None else min(len(source), max_examples)
    images, labels = [], []
    for i in range(n):
        record = source[i]
        image = np.asarray(record["image"])
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = _resize_center_crop(image, image_size)
        images.append(image)
        labels.append(int(record["label"]))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{name}: images have different shapes {sorted(shapes)[:3]}...; pass image_size=")
    images = np.stack(images).astype(np.float32) / 255.0 if images else np.zeros((0, 1, 1, 1), np.float32)
    return images, np.asarray(labels, np.int32)


# ---------------------------------------------------------------------------
# Synthetic data for tests.
# ---------------------------------------------------------------------------


def synthetic_dataset(
    num_examples: int = 512,
    image_shape: Sequence[int] = (8, 8, 1),
    num_classes: int = 4,
    *,
    noise: float = 0.5,
    seed: int = 0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """Class prototypes plus Gaussian noise: learnable in a few hundred steps.

    Prototypes depend only on `seed`, so 'train' and 'test' share classes but
    not samples.
    """
    proto_rng = np.random.default_rng(seed)
    prototypes = proto_rng.uniform(0.0, 1.0, size=(num_classes, *image_shape)).astype(np.float32)
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    images = prototypes[labels] + noise * rng.standard_normal((num_examples, *image_shape)).astype(np.float32)
    return images.astype(np.float32), labels


# ---------------------------------------------------------------------------
# Public entry points.
# ---------------------------------------------------------------------------


def load_dataset(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    image_size: int | None = None,
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images NHWC float32, labels int32) for a dataset split.

    'fashion_mnist' reads the offline IDX files; 'synthetic' builds the test
    dataset; every other name goes through `tfds.data_source`.
    """
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split, data_dir)
    elif name == "synthetic":
        images, labels = synthetic_dataset(split=split)
    else:
        return load_tfds(name, split, data_dir, image_size=image_size, max_examples=max_examples)
    if max_examples is not None:
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels


def dataset_stats(name: str, images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) for normalisation: known constants, else computed from `images`."""
    if name in DATASET_STATS:
        mean, std = DATASET_STATS[name]
    elif images is not None:
        mean, std = images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2)) + 1e-6
    else:
        raise ValueError(f"no statistics known for {name!r}; pass images to compute them")
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """CIFAR augmentation: zero-pad by `pad`, crop back at a random offset, flip half horizontally."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
    cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
    flip = rng.random(n) < 0.5
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def batch_iterator(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
    mean: Sequence[float] | np.ndarray | None = None,
    std: Sequence[float] | np.ndarray | None = None,
    augment: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (x float32 NHWC, y int32) batches; the order depends only on `seed`.

    `num_epochs=None` repeats forever. Normalisation (x - mean) / std is
    applied per channel after augmentation.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if batch_size <= 0 or (drop_remainder and batch_size > n):
        raise ValueError(f"batch_size {batch_size} does not fit {n} examples")
    order_rng = np.random.default_rng([seed, 0])
    aug_rng = np.random.default_rng([seed, 1])
    mean_a = None if mean is None else np.asarray(mean, np.float32)
    std_a = None if std is None else np.asarray(std, np.float32)
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        order = order_rng.permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx].astype(np.float32)
            if augment:
                x = random_crop_flip(x, aug_rng)
            if mean_a is not None:
                x = x - mean_a
            if std_a is not None:
                x = x / std_a
            yield x, labels[idx].astype(np.int32)
        epoch += 1
