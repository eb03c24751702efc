"""Raw data sources for the prepare stage, each returning features, integer labels and class names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawDataset:
    x: np.ndarray  # (n, *input_shape), float32
    y: np.ndarray  # (n,), int64 in [0, len(class_names))
    class_names: list[str]


def load_dataset(name: str) -> RawDataset:
    loaders = {"digits": _digits}
    return loaders[name]()


def _digits() -> RawDataset:
    """scikit-learn's 1,797 8x8 handwritten digits, shipped inside the package (no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (n, 1 channel, 8, 8)
    return RawDataset(x=x, y=bunch.target.astype(np.int64), class_names=[str(c) for c in bunch.target_names])
