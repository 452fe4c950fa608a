"""Fashion-MNIST (Xiao et al. 2017) from the Debian package `dataset-fashion-mnist`.

The package installs four gzipped IDX files; nothing is downloaded. Images are padded from
28x28 to 32x32 (so that f = 4 or 8 autoencoders and 2-3 UNet levels divide them) and scaled
to [-1, 1]; each label has the caption "a photo of a {name}".
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def caption(label: int) -> str:
    return f"a photo of a {CLASS_NAMES[label]}"


def data_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("LDMKIT_FASHION_MNIST", DEFAULT_ROOT))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format): magic 0x0000 08 NDIM, NDIM big-endian sizes, uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape} ({np.prod(shape)} bytes), found {body.size}")
    return body.reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, pad_to: int = 32, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, pad_to, pad_to) float in [-1, 1], labels (N,) long)."""
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    root = data_root(root)
    paths = [root / name for name in FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: missing {missing}. Install the Debian package "
            "(apt-get install dataset-fashion-mnist; scripts/setup.sh does it) or point "
            "LDMKIT_FASHION_MNIST at a folder with the four .gz files."
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1)[:, None]  # (N, 1, 28, 28)
    pad = pad_to - x.shape[-1]
    if pad < 0:
        raise ValueError(f"pad_to={pad_to} is smaller than the 28x28 images")
    x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
    return x, torch.from_numpy(labels.astype(np.int64))
