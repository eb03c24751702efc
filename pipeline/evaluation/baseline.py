"""A classical baseline beside every evaluated model: what a data scientist would fit in five minutes, on the same
prepared training split, scored on the same test rows.

- text: TF-IDF over word 1- and 2-grams of the raw training messages, then a linear SVM (LinearSVC). The raw texts
  are re-read through the rows each split's `index` array names, and checked against the prepared token ids, so
  the baseline sees exactly the messages the model saw (not the model's truncated, vocabulary-limited ids);
- tabular: LogisticRegression on the preprocessed features (embedding indices one-hot encoded, as a linear model
  needs them);
- image: LogisticRegression on the flattened, standardised pixels.

Its scores go to `baseline.json` (a DVC metrics file with the headline keys of the model's `metrics.json`, plus
the model's macro F1 minus the baseline's) and to the MLflow run as `baseline/...` metrics with the param
`baseline.model`. Time and memory are bounded: tables and images are fitted on a random sample of at most
MAX_TRAIN_CELLS feature values of the training split (only those rows are read from its memory map, or decoded), and
the test split is predicted a batch at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import console
from pipeline.artifacts import BASELINE_FILE, open_split, read_meta
from pipeline.files import write_json

log = console.get_logger(__name__)

HEADLINE_KEYS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")
GAIN_KEY = "model_f1_gain"  # the model's f1_macro minus the baseline's (short: dvc metrics show fits 120 columns)
# Rows x features the linear models are fitted on: digits (1,257 x 64) and tables up to ~100k rows x 200 features
# fit whole, in seconds; larger training splits are sampled down so the baseline stays a small cost beside training.
MAX_TRAIN_CELLS = 20_000_000
SAMPLE_SEED = 0
PREDICT_BATCH_ROWS = 65536  # test rows predicted at a time
LOGISTIC_MAX_ITER = 1000  # lbfgs; scikit-learn's default 100 stops short on unscaled one-hot + numeric columns


@dataclass
class Baseline:
    name: str  # the classical model, e.g. LinearSVC
    scores: dict[str, float]  # HEADLINE_KEYS on the test split
    fit_seconds: float
    predicted: np.ndarray  # class indices of the test rows


def fit_and_score(prepared_dir: Path) -> Baseline | None:
    """The kind's baseline fitted on the training split and scored on the test split; None (with a warning) when
    the raw texts a text baseline needs are no longer those prepared."""
    meta = read_meta(prepared_dir)
    y_test = np.array(open_split(prepared_dir, "test", "y"))
    start = time.perf_counter()
    if meta["kind"] == "text":
        train, test = (
            {a: np.array(open_split(prepared_dir, s, a)) for a in ("x", "y", "index")} for s in ("train", "test")
        )
        fitted = _text_baseline(prepared_dir, meta, train, test)
        if fitted is None:
            return None
        name, predicted = fitted
    else:
        name = "LogisticRegression"
        predicted = _linear_baseline(meta, prepared_dir)
    seconds = time.perf_counter() - start
    return Baseline(name, headline_scores(y_test, predicted, meta["num_classes"]), seconds, predicted)


def headline_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(num_classes))  # a class the test split lacks still counts, as in the model's report
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(macro[2]),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_weighted": float(weighted[2]),
    }


def run(prepared_dir: Path, out_dir: Path, model_name: str, model_f1_macro: float, enabled: bool = True) -> str:
    """Fit and score the baseline, write `out_dir/baseline.json`, log it to the active MLflow run, and return the
    sentence evaluate prints. Switched off, the metrics file is written empty (DVC expects it)."""
    base = fit_and_score(prepared_dir) if enabled else None
    if base is None:
        write_json(out_dir / BASELINE_FILE, {})
        return "baseline off (evaluate.baseline: false)" if not enabled else "no baseline"
    write_json(out_dir / BASELINE_FILE, {**base.scores, GAIN_KEY: model_f1_macro - base.scores["f1_macro"]})
    import mlflow

    mlflow.log_param("baseline.model", base.name)
    mlflow.log_metrics(
        {**{f"baseline/{k}": v for k, v in base.scores.items()}, "baseline/fit_seconds": base.fit_seconds}
    )
    return (
        f"{model_name} F1 {model_f1_macro:.3f} vs baseline {base.name} {base.scores['f1_macro']:.3f}, "
        f"{model_f1_macro - base.scores['f1_macro']:+.3f} (macro F1 on the test split; baseline fitted in "
        f"{base.fit_seconds:.1f} s)"
    )


def _linear_baseline(meta: dict[str, Any], prepared_dir: Path) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.data import split_inputs, split_rows

    y_train = np.array(open_split(prepared_dir, "train", "y"))
    keep = _sample(len(y_train), int(np.prod(meta["input_shape"])))
    x_train = split_rows(prepared_dir, "train", keep)
    x_train, y_train = x_train.reshape(len(x_train), -1), y_train[keep]
    steps: list[Any] = []
    cardinalities = meta.get("categorical_cardinalities")
    if cardinalities:  # index columns after the numeric ones: one-hot, as the MLP's embeddings are per category
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import OneHotEncoder

        numeric = meta["numeric_features"]
        steps.append(
            ColumnTransformer(
                [
                    ("numeric", "passthrough", list(range(numeric))),
                    ("indices", OneHotEncoder(handle_unknown="ignore"), list(range(numeric, x_train.shape[1]))),
                ]
            )
        )
    model = make_pipeline(*steps, LogisticRegression(max_iter=LOGISTIC_MAX_ITER)).fit(x_train, y_train)
    return np.concatenate(
        [model.predict(x.reshape(len(x), -1)) for x in split_inputs(prepared_dir, "test", PREDICT_BATCH_ROWS)]
    )


def _sample(rows: int, features: int) -> np.ndarray:
    """The training rows the baseline is fitted on, increasing: all of them, or a random sample of
    MAX_TRAIN_CELLS / features."""
    most = max(1, MAX_TRAIN_CELLS // max(1, features))
    if rows <= most:
        return np.arange(rows)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(rows, size=most, replace=False))


def _text_baseline(prepared_dir: Path, meta: dict[str, Any], train: Any, test: Any) -> tuple[str, np.ndarray] | None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from pipeline.data import DataError, model_input
    from pipeline.data.text import load_preprocessor

    texts = {}
    try:
        for split, arrays in (("train", train), ("test", test)):
            texts[split] = _raw_texts(meta, arrays["index"])
    except (DataError, OSError) as exc:
        log.warning(f"evaluate: warning: no baseline: the raw texts cannot be read again ({exc}).")
        return None
    vocabulary = load_preprocessor(prepared_dir, meta)
    if not np.array_equal(model_input(vocabulary.transform(texts["train"])), model_input(train["x"])):
        log.warning(
            f"evaluate: warning: no baseline: {meta['dataset']} has changed since prepare ran; rerun prepare "
            "(dvc repro) to compare the model with a baseline on the same texts."
        )
        return None
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    return "LinearSVC", model.fit(texts["train"], train["y"]).predict(texts["test"])


def _raw_texts(meta: dict[str, Any], index: np.ndarray) -> list[str]:
    from pipeline.config import TextParams
    from pipeline.data import require_file
    from pipeline.data.text import MessageFile

    messages = MessageFile(require_file(meta["dataset"]), TextParams(**meta["preprocessing"]["params"]))
    return list(messages[index])
