"""Stage 1, prepare: raw data -> stratified train/val/test splits, preprocessed with what the training split taught.

    python -m pipeline.stages.prepare --out data/prepared

Writes each split's arrays as `.npy` files, `{train,val,test}_{x,y,index}.npy` (`index`: each row's position in the
raw data), which training opens as memory maps; a table file is transformed chunk by chunk straight into them, and
an image folder gets no `x` but its file list (`image_files.json`), decoded as training takes batches. Also the
fitted preprocessing (`preprocessor.skops` for tables, `vocab.json` for text; image statistics live in meta.json) and
`meta.json` (kind, class names, input shape, vocabulary size, split sizes, a digest of the arrays). Reads `data.*`
only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import console
from pipeline.artifacts import EXAMPLE_FILE, META_FILE, PREPARED_FILES, SPLITS, split_file
from pipeline.config import DataParams, load_params
from pipeline.errors import run_cli

log = console.get_logger(__name__)

RAW_DIR = Path("data/raw")  # declared as a dependency of prepare in dvc.yaml
MIN_PER_CLASS = 3  # one example per split, the least a stratified 3-way split can do
EXAMPLE_ROWS = 3
DIGEST_ROWS = 65536  # rows of a written split hashed at a time


def encode_labels(labels: np.ndarray, class_names: list[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    from pipeline.data import DataError

    if class_names is not None:  # built-ins: labels are already 0..k-1
        return labels.astype(np.int64), class_names
    # Class names are the labels as text, sorted; converting only the distinct values, not every row, keeps a
    # million-row target from becoming a million fixed-width strings.
    import pandas as pd

    codes, distinct = pd.factorize(labels, use_na_sentinel=False)
    names, index_of_distinct = np.unique(np.asarray(distinct).astype(str), return_inverse=True)
    y = index_of_distinct[codes]
    if len(names) < 2:
        raise DataError(
            f"{source}: every row has the label '{names[0]}'; a classifier needs at least two classes. "
            "Check that the label column is the right one (data.tabular.target, data.text.label_column) "
            "or add examples of the other classes."
        )
    return y.astype(np.int64), names.tolist()


def split_indices(y: np.ndarray, params: DataParams, class_names: list[str], source: str) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    from pipeline.data import DataError

    counts = np.bincount(y, minlength=len(class_names))
    small = {class_names[i]: int(n) for i, n in enumerate(counts) if n < MIN_PER_CLASS}
    if small:
        raise DataError(
            f"{source}: class(es) with fewer than {MIN_PER_CLASS} examples cannot be split into "
            f"train/val/test: {small}. Add examples or remove those rows."
        )
    everything = np.arange(len(y))
    try:
        rest, test = train_test_split(everything, test_size=params.test_fraction, stratify=y, random_state=params.seed)
        # val_fraction is of the whole data set; rescale it to what is left after the test split.
        val_of_rest = params.val_fraction / (1 - params.test_fraction)
        train, val = train_test_split(rest, test_size=val_of_rest, stratify=y[rest], random_state=params.seed)
    except ValueError as exc:  # e.g. a test split smaller than the number of classes
        raise DataError(
            f"{source}: {len(y)} rows in {len(class_names)} classes cannot be split with "
            f"data.val_fraction {params.val_fraction} and data.test_fraction {params.test_fraction} "
            f"({exc}). Use larger fractions or more data."
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def raw_example(inputs: Any) -> object:
    """A few raw training inputs, as JSON: the MLflow model's input example and signature come from them."""
    if hasattr(inputs, "to_dict"):
        return json.loads(inputs.to_json(orient="records"))  # NaN -> null, numpy types -> JSON
    return inputs.tolist() if hasattr(inputs, "tolist") else list(inputs)


def write_split(folder: Path, split: str, x: np.ndarray | None, y: np.ndarray, idx: np.ndarray, digest: Any) -> None:
    # A function of its own so that each split's array is freed before the next one is made. No x: image files.
    for array, values in (("x", x), ("y", y[idx]), ("index", idx)):
        if values is not None:
            np.save(folder / split_file(split, array), values, allow_pickle=False)
    if x is not None:
        digest.update(np.ascontiguousarray(x))  # the buffers themselves: no copies of large splits
    digest.update(y[idx])


def fit_sample(train: np.ndarray, most: int | None, seed: int) -> np.ndarray:
    """The training rows the preprocessing is fitted on: all of them, or a uniform random sample of `most` (tables
    larger than that), increasing. Means, spreads, medians and category sets of a sample of a million rows differ
    from the whole split's by far less than the noise between splits; a category too rare to be sampled is
    encoded as unknown, as any category unseen in training is."""
    if most is None or len(train) <= most:
        return train
    return np.sort(np.random.default_rng(seed).choice(train, size=most, replace=False))


def write_splits_in_chunks(
    folder: Path, inputs: Any, preprocessor: Any, y: np.ndarray, splits: dict[str, np.ndarray], digest: Any
) -> None:
    """Transform the inputs chunk by chunk straight into each split's `.npy` (a memory map as it is written): each
    chunk's rows go to the splits that hold them, so no split, nor the table, is ever in memory."""
    width = preprocessor.describe()["input_shape"]
    x = {
        name: np.lib.format.open_memmap(
            folder / split_file(name, "x"), mode="w+", dtype=np.float32, shape=(len(idx), *width)
        )
        for name, idx in splits.items()
    }
    for start, chunk in inputs.chunks():
        values = preprocessor.transform(chunk)
        for name, idx in splits.items():  # splits are increasing row numbers: a chunk's rows are one slice of each
            lo, hi = np.searchsorted(idx, [start, start + len(chunk)])
            x[name][lo:hi] = values[idx[lo:hi] - start]
    for name, idx in splits.items():
        x[name].flush()
        for start in range(0, len(idx), DIGEST_ROWS):  # the same digest as of the split held whole
            digest.update(np.ascontiguousarray(x[name][start : start + DIGEST_ROWS]))
        digest.update(y[idx])
        del x[name]
        for array, values in (("y", y[idx]), ("index", idx)):
            np.save(folder / split_file(name, array), values, allow_pickle=False)


def prepare(params: DataParams, out_dir: Path) -> dict:
    from pipeline.data import load_raw, new_preprocessor, take
    from pipeline.files import atomic_path, write_json

    raw = load_raw(params)
    y, class_names = encode_labels(raw.labels, raw.class_names, params.dataset)
    splits = split_indices(y, params, class_names, params.dataset)
    fit_rows = fit_sample(splits["train"], getattr(raw.inputs, "fit_rows", None), params.seed)
    preprocessor = new_preprocessor(params).fit(take(raw.inputs, fit_rows))
    digest = hashlib.sha256()
    # Image folders stay files, decoded as training takes them: their list is saved instead of `x` arrays.
    listed = hasattr(raw.inputs, "save")
    # A failure leaves the previous output (or none), never half of one.
    with atomic_path(out_dir, PREPARED_FILES) as tmp:
        tmp.mkdir()
        if hasattr(raw.inputs, "chunks"):  # table files: never held whole
            write_splits_in_chunks(tmp, raw.inputs, preprocessor, y, splits, digest)
        else:
            for name in SPLITS:
                x = None if listed else preprocessor.transform(take(raw.inputs, splits[name]))
                write_split(tmp, name, x, y, splits[name], digest)
        if listed:
            raw.inputs.save(tmp)
            digest.update(raw.inputs.digest.encode())
        preprocessor.save(tmp)
        write_json(tmp / EXAMPLE_FILE, raw_example(take(raw.inputs, splits["train"][:EXAMPLE_ROWS])))
        meta = {
            "dataset": params.dataset,
            "kind": params.resolved_kind,
            "storage": "image_files" if listed else "arrays",
            "class_names": class_names,
            "num_classes": len(class_names),
            **preprocessor.describe(),
            "split_sizes": {name: len(idx) for name, idx in splits.items()},
            "class_counts": {"train": np.bincount(y[splits["train"]], minlength=len(class_names)).tolist()},
            "digest": digest.hexdigest()[:32],
        }
        write_json(tmp / META_FILE, meta)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the splits, preprocessing, meta.json")
    args = parser.parse_args()
    params = load_params().data
    source = Path(params.dataset)
    if source.exists() and not source.resolve().is_relative_to(RAW_DIR.resolve()):
        log.warning(
            f"prepare: warning: {source} is outside {RAW_DIR}/, so DVC will not notice when it changes; put it "
            f"there (`dvc add {RAW_DIR}/{source.name}` for a large file)."
        )
    try:
        meta = prepare(params, args.out)
    except UnicodeDecodeError as exc:  # a reader that let undecodable bytes through (pyarrow keeps them as bytes)
        from pipeline.data import DataError

        raise DataError(
            f"{params.dataset}: not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} in a "
            "value). Re-save the file as UTF-8."
        ) from None
    log.info(
        f"prepare: {meta['dataset']} ({meta['kind']}) -> {args.out} {meta['split_sizes']}, "
        f"input shape {meta['input_shape']}, classes {meta['class_names'][:10]}"
    )
    if "feature_summary" in meta:  # tables: which columns became which inputs, and which were left out
        from pipeline.data.tabular import dropped_warning, summary_lines

        log.info("\n".join(summary_lines(meta["feature_summary"])))
        warning = dropped_warning(meta["feature_summary"])
        if warning:
            log.warning(warning)


if __name__ == "__main__":
    run_cli(main)
