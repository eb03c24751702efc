"""The predict command on raw data gives exactly what evaluate computes from the prepared test split.

For each kind of data a tiny model is trained for real (prepare, then `train.fit` with an MLflow store in a
temporary folder). The raw rows of the test split, picked from the raw source with the split's `index` array and
written back in the training format, go through `pipeline.predict.predict`; its classes must equal evaluate's
(`predict_split`) and its probabilities agree to 1e-6.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from pipeline.config import (
    CNNParams,
    DataParams,
    ImageParams,
    MlflowParams,
    MLPParams,
    ModelParams,
    Params,
    RNNParams,
    TabularParams,
    TextParams,
    TrainerParams,
    TrainParams,
)
from pipeline.data import DataError, read_split
from pipeline.evaluate import predict_split
from pipeline.predict import predict
from pipeline.prepare import prepare
from pipeline.train import MODEL_FILE, fit
from tests.conftest import REPO, SHARED_DATA, run

SMS = SHARED_DATA / "sms_spam" / "SMSSpamCollection"


@dataclass
class Trained:
    root: Path
    prepared: Path
    model: Path
    test_input: Path  # the test split's raw rows, in the training format
    test_index: np.ndarray
    class_names: list[str]


def train_tiny(root: Path, data: DataParams, model: ModelParams, max_epochs: int = 2) -> tuple[Path, Path]:
    prepared, model_dir = root / "prepared", root / "model"
    prepare(data, prepared)
    params = Params(
        data=data,
        model=model,
        train=TrainParams(max_epochs=max_epochs, batch_size=32, lr=0.01, early_stopping_patience=None),
        trainer=TrainerParams(progress_bar=False, log_every_n_steps=1),
        mlflow=MlflowParams(tracking_uri=f"sqlite:///{root.parent / 'mlflow.db'}", experiment_name="predict-tests"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # artifacts go beside the store's root, inside the temporary folder
        mp.delenv("DVC_ROOT", raising=False)
        run_id = fit(params, prepared, model_dir, root / "checkpoints")
    assert run_id and (model_dir / MODEL_FILE).is_file()
    return prepared, model_dir


def split_index(prepared: Path, split: str = "test") -> np.ndarray:
    return read_split(prepared, split)["index"]


# ---------------------------------------------------------------------------------------------------------------
# One tiny trained model per kind, shared by the tests of this module
# ---------------------------------------------------------------------------------------------------------------
def animals_table(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """3 classes that the numbers and the colour both hint at; a few missing values of each type."""
    rng = np.random.default_rng(seed)
    label = np.repeat(["bird", "cat", "dog"], n // 3)
    code = np.repeat(np.arange(3), n // 3)
    frame = pd.DataFrame(
        {
            "weight": (rng.normal(0, 1, n) + 2 * code).round(3),
            "legs": np.where(code == 0, 2, 4) + rng.integers(0, 2, n),
            "colour": np.where(
                rng.random(n) < 0.7, np.array(["blue", "grey", "brown"])[code], rng.choice(["blue", "grey", "brown"], n)
            ).astype(object),
            "label": label,
        }
    )
    frame.loc[rng.choice(n, 8, replace=False), "weight"] = np.nan
    frame.loc[rng.choice(n, 8, replace=False), "colour"] = None
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def tabular(store: Path) -> Trained:
    root = store / "tabular"
    root.mkdir()
    frame = animals_table()
    frame.to_csv(root / "animals.csv", index=False)
    prepared, model = train_tiny(
        root,
        DataParams(dataset=str(root / "animals.csv"), tabular=TabularParams(target="label")),
        ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[16], dropout=0.0)),
    )
    index = split_index(prepared)
    assert frame.iloc[index][["weight", "colour"]].isna().any().all()  # imputation is part of what must agree
    frame.iloc[index].to_csv(root / "test_rows.csv", index=False)
    return Trained(root, prepared, model, root / "test_rows.csv", index, ["bird", "cat", "dog"])


@pytest.fixture(scope="module")
def text(store: Path) -> Trained:
    if not SMS.is_file():
        pytest.skip(f"SMS Spam corpus not found at {SMS}")
    root = store / "text"
    root.mkdir()
    lines = SMS.read_text(encoding="utf-8").splitlines(keepends=True)[:600]
    (root / "sms.tsv").write_text("".join(lines), encoding="utf-8")
    prepared, model = train_tiny(
        root,
        DataParams(dataset=str(root / "sms.tsv"), kind="text", text=TextParams(max_len=32)),
        ModelParams(name="rnn", rnn=RNNParams(cell="gru", hidden_size=16, embedding_dim=16, dropout=0.0)),
        max_epochs=1,
    )
    index = split_index(prepared)
    (root / "test.tsv").write_text("".join(lines[i] for i in index), encoding="utf-8")
    return Trained(root, prepared, model, root / "test.tsv", index, ["ham", "spam"])


@pytest.fixture(scope="module")
def image(store: Path) -> Trained:
    root = store / "image"
    root.mkdir()
    prepared, model = train_tiny(
        root, DataParams(dataset="digits"), ModelParams(name="cnn", cnn=CNNParams(channels=[8, 16], hidden_dim=32))
    )
    index = split_index(prepared)
    np.savez(root / "test.npz", x=load_digits().images[index])  # the raw 8x8 float64 images, no labels
    return Trained(root, prepared, model, root / "test.npz", index, [str(d) for d in range(10)])


KINDS = ["tabular", "text", "image"]


@pytest.fixture(params=KINDS)
def trained(request) -> Trained:
    return request.getfixturevalue(request.param)


def predicted_indices(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    return table["predicted"].map({name: i for i, name in enumerate(class_names)}).to_numpy()


def probabilities(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    return table[[f"prob_{name}" for name in class_names]].to_numpy()


# ---------------------------------------------------------------------------------------------------------------
# predict == evaluate
# ---------------------------------------------------------------------------------------------------------------
def test_predict_on_raw_test_rows_equals_evaluate(trained: Trained) -> None:
    y_true, y_pred, probs = predict_split(trained.model / MODEL_FILE, trained.prepared, "test", 256)
    table = predict(trained.test_input, trained.prepared, trained.model)

    assert list(table.columns) == ["id", "predicted", *(f"prob_{c}" for c in trained.class_names)]
    assert len(table) == len(trained.test_index) == len(y_true)
    assert np.array_equal(predicted_indices(table, trained.class_names), y_pred)
    np.testing.assert_allclose(probabilities(table, trained.class_names), probs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(probabilities(table, trained.class_names).sum(axis=1), 1, atol=1e-5)
    # A model whose output varies with its input, so the agreement above says something.
    assert np.ptp(probs[:, 0]) > 1e-3


def test_predict_ids(tabular: Trained, text: Trained, image: Trained) -> None:
    n = len(tabular.test_index)
    assert predict(tabular.test_input, tabular.prepared, tabular.model)["id"].tolist() == [str(i) for i in range(n)]
    lines = text.test_input.read_text(encoding="utf-8").splitlines()
    expected = [line.split("\t", 1)[1] for line in lines]
    assert predict(text.test_input, text.prepared, text.model)["id"].tolist() == expected
    ids = predict(image.test_input, image.prepared, image.model)["id"].tolist()
    assert ids == [f"test.npz[{i}]" for i in range(len(image.test_index))]


def test_tabular_rows_without_the_target_column(tabular: Trained) -> None:
    frame = pd.read_csv(tabular.test_input).drop(columns=["label"])[["colour", "legs", "weight"]]  # any order
    frame.to_csv(tabular.root / "no_target.csv", index=False)
    expected = predict(tabular.test_input, tabular.prepared, tabular.model)
    got = predict(tabular.root / "no_target.csv", tabular.prepared, tabular.model)
    assert got["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(
        probabilities(got, tabular.class_names), probabilities(expected, tabular.class_names), atol=1e-6, rtol=0
    )


def test_text_file_of_messages_predicts_one_row_per_line(text: Trained) -> None:
    messages = [line.split("\t", 1)[1] for line in text.test_input.read_text(encoding="utf-8").splitlines()]
    (text.root / "messages.txt").write_text("\n".join(messages) + "\n", encoding="utf-8")
    table = predict(text.root / "messages.txt", text.prepared, text.model)
    assert len(table) == len(messages)
    assert table["id"].tolist() == messages
    _, y_pred, probs = predict_split(text.model / MODEL_FILE, text.prepared, "test", 256)
    assert np.array_equal(predicted_indices(table, text.class_names), y_pred)
    np.testing.assert_allclose(probabilities(table, text.class_names), probs, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Images: channels
# ---------------------------------------------------------------------------------------------------------------
def test_grayscale_model_takes_three_channel_images_converted_to_grey(image: Trained) -> None:
    grey = load_digits().images[image.test_index]
    # Three equal channels: the luminance weights sum to 1, so the grey image is the original one.
    np.savez(image.root / "rgb_last.npz", x=np.repeat(grey[..., None], 3, axis=-1))
    np.savez(image.root / "rgb_first.npz", x=np.repeat(grey[:, None], 3, axis=1))
    expected = predict(image.test_input, image.prepared, image.model)
    for name in ("rgb_last.npz", "rgb_first.npz"):
        got = predict(image.root / name, image.prepared, image.model)
        assert got["predicted"].tolist() == expected["predicted"].tolist()
        np.testing.assert_allclose(
            probabilities(got, image.class_names), probabilities(expected, image.class_names), atol=1e-5, rtol=0
        )


def test_rgb_model_refuses_single_channel_array_images(tmp_path: Path, image: Trained) -> None:
    prepared = tmp_path / "prepared_rgb"
    meta = prepare(DataParams(dataset="digits", image=ImageParams(color="rgb")), prepared)
    assert meta["input_shape"] == [3, 8, 8]
    np.savez(tmp_path / "grey.npz", x=load_digits().images[:5])
    with pytest.raises(DataError, match=r"grey\.npz: images have 1 channel\(s\), the model was trained on 3"):
        predict(tmp_path / "grey.npz", prepared, image.model)


def test_images_of_another_size_without_data_image_size_are_refused(image: Trained) -> None:
    np.savez(image.root / "big.npz", x=np.zeros((4, 12, 12)))
    with pytest.raises(
        DataError,
        match=r"big\.npz: preprocessed to shape \[1, 12, 12\], but the model takes "
        r"\[1, 8, 8\]",
    ):
        predict(image.root / "big.npz", image.prepared, image.model)


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def predict_command(cwd: Path, trained: Trained, *args: str):
    return run(
        [
            sys.executable,
            "-m",
            "pipeline.predict",
            "--prepared",
            str(trained.prepared),
            "--model",
            str(trained.model),
            *args,
        ],
        cwd,
        check=False,
        timeout=180,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )


def test_command_writes_a_csv(tmp_path: Path, tabular: Trained) -> None:
    result = predict_command(tmp_path, tabular, "--input", str(tabular.test_input), "--out", "out/preds.csv")
    assert result.returncode == 0, result.stderr
    assert f"{len(tabular.test_index)} predictions written to out/preds.csv" in result.stdout
    written = pd.read_csv(tmp_path / "out" / "preds.csv", dtype={"id": str})
    assert list(written.columns) == ["id", "predicted", "prob_bird", "prob_cat", "prob_dog"]
    expected = predict(tabular.test_input, tabular.prepared, tabular.model)
    assert written["id"].tolist() == expected["id"].tolist()
    assert written["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(
        probabilities(written, tabular.class_names), probabilities(expected, tabular.class_names), atol=1e-6, rtol=0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["preds.csv"]  # no temporary left


@pytest.mark.parametrize("out", ["results", ".", "data"])
def test_command_never_replaces_a_folder_given_as_out(tmp_path: Path, tabular: Trained, out: str) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("precious")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = predict_command(tmp_path, tabular, "--input", str(tabular.test_input), "--out", out)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "data" / "raw.csv").read_text() == "precious"


def test_command_prints_to_stdout_without_out(tmp_path: Path, text: Trained) -> None:
    (tmp_path / "two.txt").write_text("WINNER!! Claim your free prize now\nsee you at home later\n", encoding="utf-8")
    result = predict_command(tmp_path, text, "--input", "two.txt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "id,predicted,prob_ham,prob_spam"
    assert len(lines) == 3
    assert lines[1].startswith("WINNER!! Claim your free prize now,") and lines[2].startswith("see you at home later,")


def test_command_missing_feature_column_exits_2_naming_it(tmp_path: Path, tabular: Trained) -> None:
    pd.read_csv(tabular.test_input).drop(columns=["colour"]).to_csv(tmp_path / "rows.csv", index=False)
    result = predict_command(tmp_path, tabular, "--input", "rows.csv", "--out", "preds.csv")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "rows.csv: missing the column(s) the model was trained on: colour" in result.stderr
    assert not (tmp_path / "preds.csv").exists()


def test_command_rgb_model_with_grey_images_exits_2(tmp_path: Path, image: Trained) -> None:
    prepare(DataParams(dataset="digits", image=ImageParams(color="rgb")), tmp_path / "prepared_rgb")
    np.savez(tmp_path / "grey.npz", x=load_digits().images[:5])
    result = run(
        [
            sys.executable,
            "-m",
            "pipeline.predict",
            "--input",
            "grey.npz",
            "--prepared",
            "prepared_rgb",
            "--model",
            str(image.model),
        ],
        tmp_path,
        check=False,
        timeout=180,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "grey.npz: images have 1 channel(s), the model was trained on 3" in result.stderr


def test_command_without_a_model_exits_2(tmp_path: Path, tabular: Trained) -> None:
    shutil.copytree(tabular.prepared, tmp_path / "prepared")
    result = run(
        [
            sys.executable,
            "-m",
            "pipeline.predict",
            "--input",
            str(tabular.test_input),
            "--prepared",
            "prepared",
            "--model",
            "nomodel",
        ],
        tmp_path,
        check=False,
        timeout=180,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )
    assert result.returncode == 2, result.stderr
    assert "nomodel/model.pt: not found" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The MLflow pyfunc model: raw inputs in, the predict command's answers out; registration
# ---------------------------------------------------------------------------------------------------------------
def test_pyfunc_model_round_trip_equals_predict(trained: Trained, store: Path) -> None:
    import mlflow

    from pipeline.data import kind_module
    from pipeline.serving import log_pyfunc_model
    from pipeline.train import read_meta

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=mlflow.set_experiment("pyfunc-tests").experiment_id):
        info = log_pyfunc_model(trained.prepared, trained.model)
    model = mlflow.pyfunc.load_model(info.model_uri)

    meta = read_meta(trained.prepared)
    inputs, _ = kind_module(meta["kind"]).read_new(trained.test_input, meta)
    model_input = pd.DataFrame({"text": inputs}) if meta["kind"] == "text" else inputs
    served = model.predict(model_input)
    expected = predict(trained.test_input, trained.prepared, trained.model)
    assert served["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(
        probabilities(served, trained.class_names), probabilities(expected, trained.class_names), atol=1e-6
    )
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None


def test_evaluate_registers_a_version_tagged_with_test_metrics(tabular: Trained, store: Path) -> None:
    from mlflow import MlflowClient

    from pipeline.artifacts import read_run_file
    from pipeline.evaluate import evaluate

    uri = f"sqlite:///{store / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tabular.root)
        summary = evaluate(
            tabular.prepared, tabular.model, tabular.root / "eval", 256, uri, register_as="animals-classifier"
        )
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name='animals-classifier'")
    assert version.run_id == read_run_file(tabular.model).run_id
    assert float(version.tags["test/accuracy"]) == pytest.approx(summary["accuracy"], abs=1e-5)
    assert "test/f1_macro" in version.tags
    loaded = __import__("mlflow").pyfunc.load_model(f"models:/animals-classifier/{version.version}")
    assert set(loaded.predict(pd.read_csv(tabular.test_input))["predicted"]) <= set(tabular.class_names)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs to predict: refused with one message (exit 2), or predicted with a warning (exit 0)
# ---------------------------------------------------------------------------------------------------------------
def rows_with(value: str, column: str = "weight", row: int = 2) -> Callable[[Path, Trained], str]:
    """The test rows with one value replaced, written as the CSV to predict."""

    def write(folder: Path, trained: Trained) -> str:
        frame = pd.read_csv(trained.test_input, dtype=str, keep_default_na=False)
        frame.loc[row, column] = value
        frame.to_csv(folder / "rows.csv", index=False)
        return "rows.csv"

    return write


def header_only(folder: Path, trained: Trained) -> str:
    (folder / "rows.csv").write_text(trained.test_input.read_text().splitlines()[0] + "\n")
    return "rows.csv"


def npz(x: np.ndarray) -> Callable[[Path, Trained], str]:
    def write(folder: Path, trained: Trained) -> str:
        np.savez(folder / "images.npz", x=x)
        return "images.npz"

    return write


def digits_with(value: float) -> np.ndarray:
    x = load_digits().images[:6].copy()
    x[3, 4, 4] = value
    return x


def png(array: np.ndarray, mode: str | None = None) -> Callable[[Path, Trained], str]:
    def write(folder: Path, trained: Trained) -> str:
        from PIL import Image

        Image.fromarray(array, mode).save(folder / "image.png")
        return "image.png"

    return write


def png_claiming_pixels(height: int, width: int) -> Callable[[Path, Trained], str]:
    """A PNG whose header claims height x width pixels (no pixel data): what a decompression bomb looks like."""

    def write(folder: Path, trained: Trained) -> str:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
        (folder / "bomb.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
        )
        return "bomb.png"

    return write


def lines(text: str) -> Callable[[Path, Trained], str]:
    def write(folder: Path, trained: Trained) -> str:
        (folder / "messages.txt").write_text(text, encoding="utf-8")
        return "messages.txt"

    return write


@dataclass
class BadInput:
    id: str
    kind: str  # which trained model: tabular, text, image
    write: Callable[[Path, Trained], str]  # writes the input into the folder; returns its file name
    phrase: str  # what the message says (besides the file's name)
    exit_code: int = 2  # 0: predicted, with a warning naming the file


BAD_INPUTS = [
    BadInput(
        "text-in-numeric-column",
        "tabular",
        rows_with("heavy"),
        "column 'weight' holds text ('heavy') where the model was trained on numbers (file lines [4])",
    ),
    BadInput("header-only-table", "tabular", header_only, "no rows to predict (only a header)"),
    BadInput("infinite-value", "tabular", rows_with("inf"), "column 'weight' holds 1 infinite value(s)"),
    BadInput("minus-infinite-value", "tabular", rows_with("-inf", row=5), "(file lines [7])"),
    BadInput("value-beyond-float32", "tabular", rows_with("1e308"), "beyond ±3.40e+38"),
    BadInput(
        "unseen-categories",
        "tabular",
        rows_with("purple", column="colour"),
        "categories never seen in training, predicted as if missing: colour: 1 ('purple')",
        exit_code=0,
    ),
    BadInput("npz-without-images", "image", npz(np.zeros((0, 8, 8))), "no images in it"),
    BadInput("npz-of-strings", "image", npz(np.array([["a", "b"], ["c", "d"]])), "not numbers"),
    BadInput(
        "npz-with-nan-pixels",
        "image",
        npz(digits_with(np.nan)),
        "1 image(s) hold NaN or infinite pixel values (first at index [3])",
    ),
    BadInput("npz-with-infinite-pixels", "image", npz(digits_with(np.inf)), "NaN or infinite pixel values"),
    BadInput(
        "npz-on-another-scale",
        "image",
        npz(load_digits().images[:6] * 16),
        "but the model was trained on values in [0, 16]",
    ),
    BadInput("decompression-bomb-png", "image", png_claiming_pixels(15000, 15000), "too large to read safely"),
    BadInput(
        "one-pixel-png",
        "image",
        png(np.full((1, 1), 200, np.uint8)),
        "smaller than the model's 8x8 pixels and were enlarged",
        exit_code=0,
    ),
    BadInput(
        "transparent-png",
        "image",
        png(np.full((8, 8, 4), 200, np.uint8), "RGBA"),
        "have transparent parts",
        exit_code=0,
    ),
    BadInput("text-file-without-messages", "text", lines("\n"), "nothing to predict in it"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_to_predict(tmp_path: Path, request, case: BadInput) -> None:
    trained = request.getfixturevalue(case.kind)
    name = case.write(tmp_path, trained)
    (tmp_path / "preds.csv").write_text("earlier predictions\n")  # what a refusal must leave as it was

    result = predict_command(tmp_path, trained, "--input", name, "--out", "preds.csv")

    assert result.returncode == case.exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr[result.stderr.index("error: " if case.exit_code else "warning: ") :]
    assert name in message and case.phrase in message, message
    if case.exit_code:
        assert (tmp_path / "preds.csv").read_text() == "earlier predictions\n"
    else:
        assert len(pd.read_csv(tmp_path / "preds.csv")) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({name, "preds.csv"})  # no temporary left


# ---------------------------------------------------------------------------------------------------------------
# Images: the value range the model was trained on
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
def test_png_images_predict_as_the_training_source(tmp_path: Path, image: Trained, bits: int) -> None:
    """Digits (values 0-16) written as 8- or 16-bit PNGs are scaled back to the model's range (meta.json)."""
    from PIL import Image

    assert json.loads((image.prepared / "meta.json").read_text())["pixel_range"] == [0.0, 16.0]
    top = 2**bits - 1
    for i, pixels in enumerate(load_digits().images[image.test_index]):
        scaled = np.round(pixels * top / 16).astype(np.uint8 if bits == 8 else np.uint16)
        Image.fromarray(scaled).save(tmp_path / f"{i:04d}.png")
    expected = predict(image.test_input, image.prepared, image.model)
    got = predict(tmp_path, image.prepared, image.model)
    # 8 bits keep a digit's 17 levels to within 0.5/255 of the scale: the probabilities move by a few thousandths.
    atol = {8: 1e-2, 16: 1e-4}[bits]
    want = probabilities(expected, image.class_names)
    np.testing.assert_allclose(probabilities(got, image.class_names), want, atol=atol, rtol=0)
    # Hence the same class wherever the model is not torn between two (a near tie may tip either way).
    top_two = np.sort(want, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * atol
    assert clear.mean() > 0.9
    assert got["predicted"][clear].tolist() == expected["predicted"][clear].tolist()
