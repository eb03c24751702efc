"""Categorical columns as embedding indices (`data.tabular.categorical_encoding: embedding`), end to end.

A small CSV with a text column is prepared and a tiny MLP trained for real (prepare, then `train.fit` with an MLflow
store in a temporary folder). The metadata must describe the column layout the network is built from, the network
must embed each categorical column, the saved model file must rebuild the same network, and prediction on raw rows
(the command, `predict()` and the MLflow pyfunc model) must agree with evaluate, unknown categories included.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.mlp import category_embedding_dim
from models.registry import build_model
from models.specs import UNKNOWN_CATEGORY
from pipeline.config import DataParams, MLPParams, ModelParams, TabularParams
from pipeline.data import read_split
from pipeline.data.tabular import UNKNOWN_INDEX
from pipeline.stages.evaluate import predict_split
from pipeline.stages.predict import predict
from pipeline.stages.train import MODEL_FILE, read_meta
from pipeline.training.trained_model import load_trained_model
from tests.helpers import (
    REPO,
    animals_table,
    predicted_indices,
    probabilities,
    run,
    split_index,
    sqlite_uri,
    train_tiny,
)

CLASSES = ["bird", "cat", "dog"]
EMBEDDING_DIM = 2  # below the colour's 3 categories, so the cap and the parameter both show
MLP_SMALL = MLPParams(hidden_dims=[16], dropout=0.0, embedding_dim=EMBEDDING_DIM)


def animals_with_habitat(n: int = 150) -> pd.DataFrame:
    """animals_table plus a second categorical column of 5 habitats, one of which only 2 rows have."""
    frame = animals_table(n)
    rng = np.random.default_rng(3)
    frame["habitat"] = rng.choice(["forest", "town", "farm", "sea"], n).astype(object)
    frame.loc[[0, 1], "habitat"] = "desert"
    return frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("embeddings") / "tabular"
    root.mkdir()
    frame = animals_with_habitat()
    frame.to_csv(root / "animals.csv", index=False)
    data = DataParams(
        dataset=str(root / "animals.csv"), tabular=TabularParams(target="label", categorical_encoding="embedding")
    )
    prepared, model = train_tiny(root, data, ModelParams(name="mlp", mlp=MLP_SMALL), max_epochs=3)
    index = split_index(prepared)
    frame.iloc[index].to_csv(root / "test_rows.csv", index=False)
    return {
        "root": root,
        "frame": frame,
        "prepared": prepared,
        "model": model,
        "test_index": index,
        "test_rows": root / "test_rows.csv",
    }


def test_meta_records_the_column_layout_from_the_training_split(trained: dict) -> None:
    meta = read_meta(trained["prepared"])
    train_rows = trained["frame"].iloc[split_index(trained["prepared"], "train")]
    assert meta["preprocessing"]["categorical"] == ["colour", "habitat"]
    assert meta["numeric_features"] == 2  # weight, legs
    # Known categories of the training rows only; a missing colour is no category.
    assert meta["categorical_cardinalities"] == [train_rows["colour"].nunique(), train_rows["habitat"].nunique()]
    assert meta["input_shape"] == [2 + 2]
    assert meta["feature_names"] == ["numeric__weight", "numeric__legs", "categorical__colour", "categorical__habitat"]


def test_indices_are_1_to_k_and_0_for_missing_or_unknown(trained: dict) -> None:
    meta = read_meta(trained["prepared"])
    frame = trained["frame"]
    train_index = split_index(trained["prepared"], "train")
    for split in ("train", "val", "test"):
        arrays = read_split(trained["prepared"], split)
        x, index = arrays["x"], arrays["index"]
        for j, column in enumerate(["colour", "habitat"]):
            known = sorted(frame[column].iloc[train_index].dropna().unique())
            expected = frame[column].iloc[index].map({c: i + 1 for i, c in enumerate(known)}).fillna(UNKNOWN_INDEX)
            assert np.array_equal(x[:, meta["numeric_features"] + j], expected.to_numpy()), (split, column)
    assert UNKNOWN_INDEX == UNKNOWN_CATEGORY


def test_the_saved_network_embeds_each_categorical_column(trained: dict) -> None:
    meta = read_meta(trained["prepared"])
    net, bundle = load_trained_model(trained["model"] / MODEL_FILE)  # weights_only=True inside
    assert bundle["categorical_cardinalities"] == meta["categorical_cardinalities"]
    embeddings = list(net.categorical_embeddings)
    assert [e.num_embeddings for e in embeddings] == [k + 1 for k in meta["categorical_cardinalities"]]
    assert [e.embedding_dim for e in embeddings] == [
        category_embedding_dim(k, EMBEDDING_DIM) for k in meta["categorical_cardinalities"]
    ]
    assert all(e.padding_idx == UNKNOWN_CATEGORY for e in embeddings)
    for e in embeddings:  # the unknown slot stays a zero vector through training; the others learned
        assert torch.count_nonzero(e.weight[UNKNOWN_CATEGORY]) == 0
        assert torch.count_nonzero(e.weight[1:]) == e.weight[1:].numel()
    first = next(m for m in net.layers if isinstance(m, nn.Linear))
    assert first.in_features == meta["numeric_features"] + sum(e.embedding_dim for e in embeddings)


def test_predict_on_raw_test_rows_equals_evaluate(trained: dict) -> None:
    y_true, y_pred, probs = predict_split(trained["model"] / MODEL_FILE, trained["prepared"], "test", 256)
    table = predict(trained["test_rows"], trained["prepared"], trained["model"])
    assert len(table) == len(y_true) == len(trained["test_index"])
    assert np.array_equal(predicted_indices(table, CLASSES), y_pred)
    np.testing.assert_allclose(probabilities(table, CLASSES), probs, atol=1e-6, rtol=0)
    assert np.ptp(probs[:, 0]) > 1e-3  # the output depends on the input, so the agreement says something


def unknown_and_missing_rows(trained: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test rows with a colour training never saw, and the same rows with no colour at all."""
    rows = pd.read_csv(trained["test_rows"])
    return rows.assign(colour="purple"), rows.assign(colour=None)


def test_an_unknown_category_predicts_like_a_missing_one(trained: dict) -> None:
    unknown, missing = unknown_and_missing_rows(trained)
    unknown.to_csv(trained["root"] / "unknown.csv", index=False)
    missing.to_csv(trained["root"] / "missing.csv", index=False)
    got = predict(trained["root"] / "unknown.csv", trained["prepared"], trained["model"])
    expected = predict(trained["root"] / "missing.csv", trained["prepared"], trained["model"])
    assert got["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(probabilities(got, CLASSES), probabilities(expected, CLASSES), atol=1e-6, rtol=0)
    # ... and index 0 is not just any colour: the known colours give other probabilities.
    known = predict(trained["test_rows"], trained["prepared"], trained["model"])
    assert np.abs(probabilities(known, CLASSES) - probabilities(got, CLASSES)).max() > 1e-4


def test_predict_command_takes_unknown_categories(trained: dict, tmp_path: Path) -> None:
    unknown, _ = unknown_and_missing_rows(trained)
    unknown.assign(habitat="moon").to_csv(tmp_path / "rows.csv", index=False)
    result = run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.predict",
            "--input",
            "rows.csv",
            "--out",
            "preds.csv",
            "--prepared",
            str(trained["prepared"]),
            "--model",
            str(trained["model"]),
        ],
        tmp_path,
        check=False,
        timeout=180,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(tmp_path / "preds.csv")
    assert len(written) == len(unknown)
    assert set(written["predicted"]) <= set(CLASSES)
    np.testing.assert_allclose(probabilities(written, CLASSES).sum(axis=1), 1, atol=1e-5)


def test_pyfunc_model_takes_unknown_categories_like_predict(trained: dict) -> None:
    import mlflow

    from pipeline.serving.pyfunc import log_pyfunc_model

    mlflow.set_tracking_uri(sqlite_uri(trained["root"].parent))
    with mlflow.start_run(experiment_id=mlflow.set_experiment("embedding-pyfunc").experiment_id):
        info = log_pyfunc_model(trained["prepared"], trained["model"])
    model = mlflow.pyfunc.load_model(info.model_uri)
    unknown, _ = unknown_and_missing_rows(trained)
    unknown.to_csv(trained["root"] / "unknown_pyfunc.csv", index=False)
    served = model.predict(unknown.drop(columns=["label"]))
    expected = predict(trained["root"] / "unknown_pyfunc.csv", trained["prepared"], trained["model"])
    assert served["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(probabilities(served, CLASSES), probabilities(expected, CLASSES), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The network on its own
# ---------------------------------------------------------------------------------------------------------------
def tabular_mlp(cardinalities: list[int], numeric: int = 3) -> nn.Module:
    return build_model(
        "mlp",
        dataclasses.asdict(MLPParams(hidden_dims=[16], dropout=0.0, embedding_dim=4)),
        [numeric + len(cardinalities)],
        2,
        None,
        cardinalities,
    )


def rows_with_indices(cardinalities: list[int], n: int = 32, numeric: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    indices = torch.stack([torch.randint(0, k + 1, (n,), generator=generator) for k in cardinalities], dim=1)
    return torch.cat([torch.randn(n, numeric, generator=generator), indices.float()], dim=1)


def test_embedding_widths_follow_the_documented_rule() -> None:
    net = tabular_mlp([1, 3, 10])
    assert [e.embedding_dim for e in net.categorical_embeddings] == [1, 3, 4]  # min(embedding_dim, K)
    assert [e.num_embeddings for e in net.categorical_embeddings] == [2, 4, 11]


def test_gradients_reach_every_known_category_embedding() -> None:
    torch.manual_seed(0)
    net = tabular_mlp([3, 5])
    x = rows_with_indices([3, 5])
    F.cross_entropy(net(x), torch.arange(len(x)) % 2).backward()
    for e in net.categorical_embeddings:
        assert e.weight.grad[1:].abs().sum() > 0
        assert torch.count_nonzero(e.weight.grad[UNKNOWN_CATEGORY]) == 0


def test_only_the_mlp_reads_embedding_indices() -> None:
    with pytest.raises(ValueError, match=re.escape("model.name: mlp")):
        build_model("cnn", {}, [5], 2, None, [3, 4])
