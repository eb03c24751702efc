"""Stage 1, prepare: raw data -> stratified train/val/test splits, normalised with training statistics.

    python -m pipeline.prepare --out data/prepared

Writes `{train,val,test}.npz` (x, y, and `index`: each row's position in the raw data) and `meta.json` (class
names, input shape, normalisation statistics, split sizes, a digest of the arrays). Reads `data.*` only.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from pipeline.config import DataParams, load_params
from pipeline.errors import run_cli

SPLITS = ("train", "val", "test")


def split_indices(y: np.ndarray, params: DataParams) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(y))
    rest, test = train_test_split(everything, test_size=params.test_fraction, stratify=y,
                                  random_state=params.seed)
    # val_fraction is of the whole data set; rescale it to what is left after the test split.
    val_of_rest = params.val_fraction / (1 - params.test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=y[rest], random_state=params.seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every other axis; channels are axis 1 of (n, channels, ...)."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def prepare(params: DataParams, out_dir: Path) -> dict:
    from pipeline.datasets import load_dataset
    from pipeline.files import atomic_path, write_json

    raw = load_dataset(params.dataset)
    splits = split_indices(raw.y, params)
    mean, std = channel_statistics(raw.x[splits["train"]])
    digest = hashlib.sha256()
    sizes = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in SPLITS:
            idx = splits[name]
            x, y = normalise(raw.x[idx], mean, std), raw.y[idx]
            np.savez(tmp / f"{name}.npz", x=x, y=y, index=idx)
            digest.update(x.tobytes() + y.tobytes())
            sizes[name] = len(idx)
        meta = {
            "dataset": params.dataset,
            "class_names": raw.class_names,
            "num_classes": len(raw.class_names),
            "input_shape": list(raw.x.shape[1:]),
            "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
            "split_sizes": sizes,
            "digest": digest.hexdigest()[:32],
        }
        write_json(tmp / "meta.json", meta)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the splits and meta.json")
    args = parser.parse_args()
    params = load_params().data
    meta = prepare(params, args.out)
    print(f"prepare: {meta['dataset']} -> {args.out} {meta['split_sizes']}, input shape {meta['input_shape']}")


if __name__ == "__main__":
    run_cli(main)
