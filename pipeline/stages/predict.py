"""Predict classes of new, raw data with the trained model and the preprocessing fitted by prepare.

    python -m pipeline.stages.predict --input new_rows.csv --out predictions.csv
    python -m pipeline.stages.predict --input messages.txt          # text: one message a line
    python -m pipeline.stages.predict --input images/               # images: a file, a folder, or an .npz with `x`

The input takes the same form as the training data (a table with the training feature columns, messages, images);
it is read and preprocessed exactly as prepare did. Writes one row per input: its id (row index, file name or the
text), the predicted class name, and one probability column per class. Inputs are read, preprocessed, predicted and
written `PREDICT_BATCH_ROWS` at a time, so memory follows the batch, not the input's length.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pipeline import console
from pipeline.artifacts import read_meta
from pipeline.errors import run_cli
from pipeline.serving.predictor import Predictor

log = console.get_logger(__name__)

DEFAULT_PREPARED, DEFAULT_MODEL = Path("data/prepared"), Path("outputs/model")
PREDICT_BATCH_ROWS = 8192  # inputs read, preprocessed and written at a time: a few MB whatever the input's length


def predict_batches(
    input_path: Path, prepared_dir: Path, model_dir: Path, batch_size: int = 1024, rows: int = PREDICT_BATCH_ROWS
) -> Iterator:
    """DataFrames of at most `rows` predictions (id, predicted, prob_<class>...), in input order."""
    from pipeline.data import DataError, kind_module

    meta = read_meta(prepared_dir)
    predictor = Predictor(prepared_dir, model_dir, meta)
    predicted = 0
    for inputs, ids in kind_module(meta["kind"]).read_new_batches(input_path, meta, rows):
        yield predictor.predict(inputs, ids, batch_size, source=str(input_path))
        predicted += len(ids)
    if not predicted:
        raise DataError(
            f"{input_path}: nothing to predict in it (no rows, messages or images). Give it the inputs "
            "to predict, in the training data's form."
        )
    if predictor.unseen:  # predicted all the same (as a missing value), but the user should know
        counts = ", ".join(
            f"{column}: {sum(values.values())} ({', '.join(repr(v) for v, _ in values.most_common(3))}"
            f"{', ...' if len(values) > 3 else ''})"
            for column, values in predictor.unseen.items()
        )
        log.warning(
            f"predict: warning: {input_path}: categories never seen in training, predicted as if missing: {counts}."
        )


def predict(input_path: Path, prepared_dir: Path, model_dir: Path, batch_size: int = 1024):
    """A DataFrame: id, predicted, prob_<class>..."""
    import pandas as pd

    return pd.concat(list(predict_batches(input_path, prepared_dir, model_dir, batch_size)), ignore_index=True)


def write_predictions(input_path: Path, prepared_dir: Path, model_dir: Path, out: TextIO) -> int:
    """Predictions as CSV into `out`, batch by batch; returns their number."""
    written = 0
    for table in predict_batches(input_path, prepared_dir, model_dir):
        table.to_csv(out, index=False, header=not written)
        written += len(table)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="new data: table, messages or images")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: print to stdout)")
    parser.add_argument("--prepared", type=Path, default=DEFAULT_PREPARED, help="prepare's output (%(default)s)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="train's output (%(default)s)")
    args = parser.parse_args()
    if args.out:
        from pipeline.files import atomic_path

        with atomic_path(args.out) as tmp:  # refuses a folder as --out before any work
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                written = write_predictions(args.input, args.prepared, args.model, out)
        log.info(f"predict: {written} predictions written to {args.out}")
    else:
        write_predictions(args.input, args.prepared, args.model, sys.stdout)


if __name__ == "__main__":
    run_cli(main)
