"""The saved preprocessing and the trained model, applied to raw inputs: what the predict command and the MLflow
pyfunc model share, so both give the same answers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.artifacts import MODEL_FILE, read_meta


class Predictor:
    """The saved preprocessing and the trained model, applied to raw inputs of the training data's kind."""

    def __init__(self, prepared_dir: Path, model_dir: Path, meta: dict | None = None):
        from pipeline.data import DataError, load_preprocessor
        from pipeline.training.trained_model import load_trained_model

        self.meta = meta or read_meta(prepared_dir)
        self.preprocessor = load_preprocessor(prepared_dir, self.meta)
        if not (model_dir / MODEL_FILE).is_file():
            raise DataError(f"{model_dir / MODEL_FILE}: not found. Train first (dvc repro).")
        self.net, bundle = load_trained_model(model_dir / MODEL_FILE)
        self.class_names = bundle["class_names"]
        self.unseen: dict[str, Counter] = {}  # column -> category -> rows, over every batch predicted so far

    def predict(self, inputs, ids: list[str], batch_size: int = 1024, source: str = "input"):
        import pandas as pd
        import torch

        from pipeline.data import DataError, model_input
        from pipeline.training.trained_model import predict_proba

        for column, values in getattr(self.preprocessor, "unseen_categories", lambda _: {})(inputs).items():
            self.unseen.setdefault(column, Counter()).update(values)
        x = self.preprocessor.transform(inputs)
        if list(x.shape[1:]) != list(self.meta["input_shape"]):
            raise DataError(
                f"{source}: preprocessed to shape {list(x.shape[1:])}, but the model takes {self.meta['input_shape']}."
            )
        probs = predict_proba(self.net, torch.from_numpy(model_input(x)), batch_size).numpy()
        table = pd.DataFrame({"id": ids, "predicted": [self.class_names[i] for i in probs.argmax(axis=1)]})
        for i, name in enumerate(self.class_names):
            table[f"prob_{name}"] = probs[:, i]
        return table
