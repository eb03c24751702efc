"""Predict classes of new, raw data with the trained model and the preprocessing fitted by prepare.

    python -m pipeline.predict --input new_rows.csv --out predictions.csv
    python -m pipeline.predict --input messages.txt          # text: one message a line
    python -m pipeline.predict --input images/               # images: a file, a folder, or an .npz with `x`

The input takes the same form as the training data (a table with the training feature columns, messages, images);
it is read and preprocessed exactly as prepare did. Writes one row per input: its id (row index, file name or the
text), the predicted class name, and one probability column per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import run_cli

DEFAULT_PREPARED, DEFAULT_MODEL = Path("data/prepared"), Path("outputs/model")


def predict(input_path: Path, prepared_dir: Path, model_dir: Path, batch_size: int = 1024):
    """A DataFrame: id, predicted, prob_<class>..."""
    from pipeline.data import kind_module
    from pipeline.train import read_meta

    meta = read_meta(prepared_dir)
    inputs, ids = kind_module(meta["kind"]).read_new(input_path, meta)
    return Predictor(prepared_dir, model_dir, meta).predict(inputs, ids, batch_size, source=str(input_path))


class Predictor:
    """The saved preprocessing and the trained model, applied to raw inputs of the training data's kind.

    Shared by the predict command and the MLflow pyfunc model, so both give the same answers.
    """

    def __init__(self, prepared_dir: Path, model_dir: Path, meta: dict | None = None):
        from pipeline.data import DataError, load_preprocessor
        from pipeline.train import MODEL_FILE, read_meta
        from pipeline.trained_model import load_trained_model

        self.meta = meta or read_meta(prepared_dir)
        self.preprocessor = load_preprocessor(prepared_dir, self.meta)
        if not (model_dir / MODEL_FILE).is_file():
            raise DataError(f"{model_dir / MODEL_FILE}: not found. Train first (dvc repro).")
        self.net, bundle = load_trained_model(model_dir / MODEL_FILE)
        self.class_names = bundle["class_names"]

    def predict(self, inputs, ids: list[str], batch_size: int = 1024, source: str = "input"):
        import pandas as pd
        import torch

        from pipeline.data import DataError, model_input
        from pipeline.trained_model import predict_proba

        x = self.preprocessor.transform(inputs)
        if list(x.shape[1:]) != list(self.meta["input_shape"]):
            raise DataError(f"{source}: preprocessed to shape {list(x.shape[1:])}, but the model takes "
                            f"{self.meta['input_shape']}.")
        probs = predict_proba(self.net, torch.from_numpy(model_input(x)), batch_size).numpy()
        table = pd.DataFrame({"id": ids, "predicted": [self.class_names[i] for i in probs.argmax(axis=1)]})
        for i, name in enumerate(self.class_names):
            table[f"prob_{name}"] = probs[:, i]
        return table


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
            table = predict(args.input, args.prepared, args.model)
            table.to_csv(tmp, index=False)
        print(f"predict: {len(table)} predictions written to {args.out}")
    else:
        print(predict(args.input, args.prepared, args.model).to_csv(index=False), end="")


if __name__ == "__main__":
    run_cli(main)
