"""prepare() on every kind of data.

The prepare stage on the real scikit-learn digits: split sizes, stratification, normalisation, determinism.

prepare() on every kind of data: tabular built-ins and files, image folders and arrays, text messages.

Everything is real data: scikit-learn's built-ins, small tables and images written here into tmp_path, and the SMS
Spam corpus from the shared data folder. prepare() runs in-process with tmp_path as the working directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.config import DataParams, ImageParams, TabularParams, TextParams
from pipeline.data import DataError, read_split
from pipeline.data.text import PAD, UNK, Vocabulary
from pipeline.errors import PipelineError
from pipeline.stages.prepare import SPLITS, prepare
from tests.helpers import SHARED_DATA

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepare") / "prepared"
    meta = prepare(DataParams(val_fraction=0.15, test_fraction=0.2, seed=42), out)
    return out, meta


def _load(out: Path) -> dict[str, dict[str, np.ndarray]]:
    splits = {}
    for name in SPLITS:
        splits[name] = read_split(out, name)
    return splits


def test_writes_the_three_splits_and_meta(prepared) -> None:
    out, meta = prepared
    assert sorted(p.name for p in out.iterdir()) == [
        "input_example.json",
        "meta.json",
        *(f"{split}_{array}.npy" for split in ("test", "train", "val") for array in ("index", "x", "y")),
    ]
    assert json.loads((out / "meta.json").read_text()) == meta


def test_split_sizes_follow_the_fractions(prepared) -> None:
    out, meta = prepared
    splits = _load(out)
    sizes = {name: len(s["y"]) for name, s in splits.items()}

    assert sum(sizes.values()) == N_DIGITS
    assert meta["split_sizes"] == sizes
    # Fractions are of the whole data set (val is rescaled after the test split); rounding moves a row or two.
    assert abs(sizes["test"] - 0.2 * N_DIGITS) <= 2
    assert abs(sizes["val"] - 0.15 * N_DIGITS) <= 2
    assert abs(sizes["train"] - 0.65 * N_DIGITS) <= 3
    for s in splits.values():
        assert len(s["x"]) == len(s["y"]) == len(s["index"])


def test_splits_are_disjoint_and_cover_every_row(prepared) -> None:
    out, _ = prepared
    splits = _load(out)
    indices = [s["index"] for s in splits.values()]

    for i, a in enumerate(indices):
        assert len(np.unique(a)) == len(a)
        for b in indices[i + 1 :]:
            assert np.intersect1d(a, b).size == 0
    assert np.array_equal(np.sort(np.concatenate(indices)), np.arange(N_DIGITS))


def test_labels_match_the_raw_rows(prepared, digits) -> None:
    out, _ = prepared
    for s in _load(out).values():
        assert s["y"].dtype == np.int64
        assert np.array_equal(s["y"], digits.target[s["index"]])


def test_splits_are_stratified(prepared, digits) -> None:
    out, _ = prepared
    overall = np.bincount(digits.target, minlength=10) / N_DIGITS
    for name, s in _load(out).items():
        counts = np.bincount(s["y"], minlength=10)
        expected = overall * len(s["y"])
        assert np.all(np.abs(counts - expected) <= 2), (name, counts, expected.round(1))


def test_normalisation_uses_training_rows_only(prepared, digits) -> None:
    out, meta = prepared
    train_index = _load(out)["train"]["index"]
    train_images = digits.images[train_index].astype(np.float32)
    all_images = digits.images.astype(np.float32)

    mean, std = meta["normalisation"]["mean"], meta["normalisation"]["std"]
    assert len(mean) == len(std) == 1  # one channel
    assert mean[0] == pytest.approx(float(train_images.mean()), rel=1e-5)
    assert std[0] == pytest.approx(float(train_images.std()), rel=1e-5)
    # ...and not those of the whole data set (which would leak val/test into training).
    assert mean[0] != pytest.approx(float(all_images.mean()), rel=1e-5)
    assert std[0] != pytest.approx(float(all_images.std()), rel=1e-5)


def test_train_split_is_standardised_and_every_split_uses_train_statistics(prepared, digits) -> None:
    out, meta = prepared
    splits = _load(out)
    x = splits["train"]["x"]
    assert x.dtype == np.float32
    assert x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)

    mean, std = meta["normalisation"]["mean"][0], meta["normalisation"]["std"][0]
    for s in splits.values():
        raw = digits.images[s["index"]][:, None, :, :]
        np.testing.assert_allclose(s["x"] * std + mean, raw, atol=1e-4)


def test_meta_describes_the_data(prepared) -> None:
    _, meta = prepared
    assert meta["dataset"] == "digits"
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["num_classes"] == 10
    assert meta["input_shape"] == [1, 8, 8]
    assert isinstance(meta["digest"], str) and len(meta["digest"]) == 32


def test_same_seed_gives_identical_splits_and_another_seed_different_ones(prepared, tmp_path: Path) -> None:
    out, meta = prepared
    again = prepare(DataParams(seed=42), tmp_path / "again")
    other = prepare(DataParams(seed=7), tmp_path / "other")

    assert again["digest"] == meta["digest"]
    assert other["digest"] != meta["digest"]
    first, second, third = _load(out), _load(tmp_path / "again"), _load(tmp_path / "other")
    for name in SPLITS:
        assert np.array_equal(first[name]["index"], second[name]["index"])
        assert np.array_equal(first[name]["x"], second[name]["x"])
        assert not np.array_equal(first[name]["index"], third[name]["index"])


def test_rerun_replaces_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "vocab.json").write_text("{}")  # left over from a text data set: prepare's own file, not needed now
    meta = prepare(DataParams(val_fraction=0.1, test_fraction=0.1), out)

    assert not (out / "vocab.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "input_example.json",
        "meta.json",
        *(f"{split}_{array}.npy" for split in ("test", "train", "val") for array in ("index", "x", "y")),
    ]
    assert sum(meta["split_sizes"].values()) == N_DIGITS
    # No temporary siblings are left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_rerun_never_deletes_files_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match=re.escape("notes.txt")):
        prepare(DataParams(val_fraction=0.1, test_fraction=0.1), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


SMS = SHARED_DATA / "sms_spam" / "SMSSpamCollection"
needs_sms = pytest.mark.skipif(not SMS.is_file(), reason=f"SMS Spam corpus not found at {SMS}")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_splits(out: Path) -> dict[str, dict[str, np.ndarray]]:
    splits = {}
    for name in SPLITS:
        splits[name] = read_split(out, name)
    return splits


def assert_stratified(splits: dict, y_all: np.ndarray, num_classes: int, slack: float = 2) -> None:
    overall = np.bincount(y_all, minlength=num_classes) / len(y_all)
    for name, s in splits.items():
        counts = np.bincount(s["y"], minlength=num_classes)
        assert np.all(np.abs(counts - overall * len(s["y"])) <= slack), (name, counts, overall * len(s["y"]))


# ---------------------------------------------------------------------------------------------------------------
# Tabular: built-ins
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "loader"), [("breast_cancer", "load_breast_cancer"), ("wine", "load_wine"), ("iris", "load_iris")]
)
def test_tabular_builtin(tmp_path: Path, name: str, loader: str) -> None:
    bunch = getattr(sklearn.datasets, loader)()
    out = tmp_path / "prepared"
    meta = prepare(DataParams(dataset=name), out)

    assert meta["kind"] == "tabular"
    assert meta["input_shape"] == [bunch.data.shape[1]]
    assert meta["class_names"] == [str(c) for c in bunch.target_names]
    assert meta["num_classes"] == len(bunch.target_names)
    assert (out / "preprocessor.skops").is_file()
    assert json.loads((out / "meta.json").read_text()) == meta

    splits = load_splits(out)
    assert sum(len(s["y"]) for s in splits.values()) == len(bunch.target)
    assert np.array_equal(np.sort(np.concatenate([s["index"] for s in splits.values()])), np.arange(len(bunch.target)))
    for s in splits.values():
        assert s["x"].dtype == np.float32 and s["x"].shape[1:] == (bunch.data.shape[1],)
        assert np.array_equal(s["y"], bunch.target[s["index"]])
    x = splits["train"]["x"]
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-4)
    # val/test use the training statistics, so theirs are close to but not exactly 0.
    assert np.abs(splits["test"]["x"].mean(axis=0)).max() > 1e-4
    assert_stratified(splits, bunch.target, len(bunch.target_names))


# ---------------------------------------------------------------------------------------------------------------
# Tabular: files
# ---------------------------------------------------------------------------------------------------------------
def mixed_frame(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """Numeric columns with NaN, a text column with a missing value, a boolean column and a string target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "height": rng.normal(170, 10, n).round(2),
            "weight": rng.normal(70, 5, n).round(2),
            "colour": rng.choice(["red", "green", "blue"], n).astype(object),
            "member": rng.choice([True, False], n),
            "species": np.tile(["setosa", "versicolor", "virginica"], n // 3),
        }
    )
    frame.loc[[3, 40], "height"] = np.nan
    frame.loc[10, "weight"] = np.nan
    frame.loc[5, "colour"] = None
    return frame


def tabular_params(path: str, **tabular) -> DataParams:
    return DataParams(dataset=path, tabular=TabularParams(target="species", **tabular))


@pytest.fixture
def mixed_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = mixed_frame()
    frame.to_csv(tmp_path / "animals.csv", index=False)
    return tmp_path / "animals.csv", frame


def test_csv_categorical_detected_one_hot_and_nan_imputed(tmp_path: Path, mixed_csv) -> None:
    path, frame = mixed_csv
    out = tmp_path / "prepared"
    meta = prepare(tabular_params(path.name), out)

    assert meta["kind"] == "tabular"
    assert meta["class_names"] == ["setosa", "versicolor", "virginica"]
    assert meta["preprocessing"]["columns"] == ["height", "weight", "colour", "member"]
    names = meta["feature_names"]
    # The text column and the boolean one are categorical: one column per category; the missing colour is imputed,
    # not a category of its own.
    for category in ("red", "green", "blue"):
        assert sum(n.endswith(f"colour_{category}") for n in names) == 1, names
    assert not any("colour_nan" in n or "colour_None" in n for n in names)
    assert sum("member_True" in n for n in names) == 1 and sum("member_False" in n for n in names) == 1
    assert sum("height" in n for n in names) == 1 and sum("weight" in n for n in names) == 1
    assert meta["input_shape"] == [len(names)] == [2 + 3 + 2]

    splits = load_splits(out)
    codes = {"setosa": 0, "versicolor": 1, "virginica": 2}
    for s in splits.values():
        assert not np.isnan(s["x"]).any()
        assert np.array_equal(s["y"], frame["species"].map(codes).to_numpy()[s["index"]])
    x = splits["train"]["x"]
    numeric = [i for i, n in enumerate(names) if "height" in n or "weight" in n]
    np.testing.assert_allclose(x[:, numeric].mean(axis=0), 0, atol=1e-5)
    onehot = [i for i, n in enumerate(names) if "colour" in n]
    assert set(np.unique(x[:, onehot])) <= {0.0, 1.0}
    assert np.all(x[:, onehot].sum(axis=1) == 1)  # exactly one colour per row, the missing one imputed
    assert_stratified(splits, frame["species"].map(codes).to_numpy(), 3)


def test_csv_missing_numeric_values_get_the_training_median(tmp_path: Path, mixed_csv) -> None:
    path, frame = mixed_csv
    out = tmp_path / "prepared"
    meta = prepare(tabular_params(path.name, scaling="none"), out)
    splits = load_splits(out)
    col = next(i for i, n in enumerate(meta["feature_names"]) if "height" in n)
    train_median = np.nanmedian(frame["height"].to_numpy()[splits["train"]["index"]])
    for s in splits.values():
        for row, raw_row in enumerate(s["index"]):
            expected = frame["height"][raw_row] if not np.isnan(frame["height"][raw_row]) else train_median
            assert s["x"][row, col] == pytest.approx(expected, rel=1e-5)


def test_features_list_restricts_the_columns(tmp_path: Path, mixed_csv) -> None:
    path, _ = mixed_csv
    meta = prepare(tabular_params(path.name, features=["height", "colour"]), tmp_path / "prepared")
    assert meta["preprocessing"]["columns"] == ["height", "colour"]
    assert not any("weight" in n or "member" in n for n in meta["feature_names"])
    assert meta["input_shape"] == [1 + 3]


def test_categorical_column_outside_features_is_a_data_error(tmp_path: Path, mixed_csv) -> None:
    path, _ = mixed_csv
    with pytest.raises(DataError, match="colour"):
        prepare(tabular_params(path.name, features=["height"], categorical=["colour"]), tmp_path / "prepared")


def test_embedding_encoding_gives_one_index_per_categorical(tmp_path: Path, mixed_csv) -> None:
    path, frame = mixed_csv
    out = tmp_path / "prepared"
    meta = prepare(tabular_params(path.name, categorical_encoding="embedding"), out)
    assert meta["input_shape"] == [4]  # height, weight, then the indices of colour and member
    assert meta["numeric_features"] == 2
    assert meta["categorical_cardinalities"] == [3, 2]  # blue/green/red, False/True: a missing value is none
    assert meta["preprocessing"]["categorical_encoding"] == "embedding"
    names = meta["feature_names"]
    colour, member = names.index("categorical__colour"), names.index("categorical__member")
    splits = load_splits(out)
    everything = np.concatenate([s["x"] for s in splits.values()])
    rows = np.concatenate([s["index"] for s in splits.values()])
    # Sorted categories 1..K; the one missing colour (row 5) shares index 0 with categories training never saw.
    expected = frame["colour"].map({"blue": 1, "green": 2, "red": 3}).fillna(0).to_numpy()[rows]
    assert np.array_equal(everything[:, colour], expected)
    assert np.array_equal(everything[:, member], frame["member"].map({False: 1, True: 2}).to_numpy()[rows])


def test_minmax_scaling_puts_training_rows_in_0_1(tmp_path: Path, mixed_csv) -> None:
    path, _ = mixed_csv
    out = tmp_path / "prepared"
    prepare(tabular_params(path.name, scaling="minmax"), out)
    x = load_splits(out)["train"]["x"]
    assert x.min() >= 0 and x.max() <= 1 + 1e-6
    np.testing.assert_allclose(x.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=0), 1, atol=1e-6)


def test_tsv_and_parquet_read_the_same_as_csv(tmp_path: Path, mixed_csv) -> None:
    _path, frame = mixed_csv
    frame.to_csv(tmp_path / "animals.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "animals.parquet", index=False)

    metas, arrays = {}, {}
    for suffix in ("csv", "tsv", "parquet"):
        out = tmp_path / f"prepared_{suffix}"
        metas[suffix] = prepare(tabular_params(f"animals.{suffix}"), out)
        arrays[suffix] = load_splits(out)
    for suffix in ("tsv", "parquet"):
        for key in ("kind", "class_names", "input_shape", "feature_names", "split_sizes"):
            assert metas[suffix][key] == metas["csv"][key], (suffix, key)
        for split in SPLITS:
            assert np.array_equal(arrays[suffix][split]["index"], arrays["csv"][split]["index"])
            assert np.array_equal(arrays[suffix][split]["y"], arrays["csv"][split]["y"])
            np.testing.assert_allclose(arrays[suffix][split]["x"], arrays["csv"][split]["x"], rtol=1e-6, atol=1e-6)


def test_csv_reads_as_pandas_read_csv_does(tmp_path: Path) -> None:
    """The reader against pandas.read_csv(engine="pyarrow") on what differs between them: missing markers, an empty
    header name, and columns whose type changes after the first block (1 MB) that typed the float32 columns."""
    from pipeline.data.tabular import read_table

    n = 80_000  # about 3 MB: the changes of type below come long after the first block
    rng = np.random.default_rng(0)
    numbers_then_text, ints_then_float = np.arange(n).astype(object), np.arange(n).astype(object)
    numbers_then_text[n - 5], ints_then_float[n - 5] = "x", "2.5"
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(3),
            "then_text": numbers_then_text,
            "then_float": ints_then_float,
            "b": rng.choice(["u", "v", "None", "", "NA", "<NA>"], n),
            "a2": rng.integers(-3, 3, n),
            "flag": rng.choice(["True", "False", ""], n),
            "big": rng.integers(0, 2**40, n),
            "empty": [""] * n,
        }
    )
    (tmp_path / "t.csv").write_text(frame.to_csv(index=False).replace("then_text", "", 1))

    ours = read_table(tmp_path / "t.csv", exact=["then_float"])
    theirs = pd.read_csv(tmp_path / "t.csv", engine="pyarrow")
    assert (
        list(ours.columns)
        == list(theirs.columns)
        == ["a", "Unnamed: 1", "then_float", "b", "a2", "flag", "big", "empty"]
    )
    assert ours["a"].dtype == ours["empty"].dtype == np.float32  # float features: float32
    assert ours["then_float"].dtype == np.float64  # exact columns keep their values
    assert ours["a2"].dtype == ours["big"].dtype == np.int64  # integers as pandas reads them
    assert isinstance(ours["b"].dtype, pd.CategoricalDtype)
    for c in theirs.columns:
        assert np.array_equal(ours[c].isna().to_numpy(), theirs[c].isna().to_numpy()), c
        if pd.api.types.is_numeric_dtype(theirs[c]) and theirs[c].dtype != bool:
            np.testing.assert_allclose(ours[c].to_numpy(np.float64), theirs[c].to_numpy(np.float64), rtol=1e-6)
        else:
            present = theirs[c].notna()
            assert ours[c][present].astype(str).tolist() == theirs[c][present].astype(str).tolist(), c
    assert set(ours["b"].dropna()) == {"u", "v"}  # "None", "", "NA", "<NA>" are missing, as in pandas


def test_repeated_header_name_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,a,species\n" + "".join(f"{i},{i},{'xyz'[i % 3]}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"t\.csv: the header names column\(s\) a more than once"):
        prepare(tabular_params("t.csv"), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_parquet_index_is_restored_as_pandas_does(tmp_path: Path, mixed_csv) -> None:
    from pipeline.data.tabular import read_table

    _, frame = mixed_csv
    frame.set_index(pd.Index([f"animal{i}" for i in range(len(frame))], name="name")).to_parquet(tmp_path / "a.pq")
    (tmp_path / "a.pq").rename(tmp_path / "a.parquet")
    ours, theirs = read_table(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "a.parquet")
    assert list(ours.columns) == list(theirs.columns) and ours.index.tolist() == theirs.index.tolist()
    assert ours.index.name == "name"


def test_table_that_is_not_utf8_names_the_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(
        b"a,b,species\n"
        + b"".join(b"%d,ok,%s\n" % (i, b"xyz"[i % 3 : i % 3 + 1]) for i in range(12))
        + b"1,caf\xe9,x\n"
    )
    with pytest.raises(DataError, match=r"t\.csv: not UTF-8 text \(column\(s\) b hold"):
        prepare(tabular_params("t.csv"), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_float_labels_keep_their_exact_text(tmp_path: Path) -> None:
    labels = np.tile([0.123456789, 1.5, 2.000001], 10)
    pd.DataFrame({"x": np.arange(30.0), "grade": labels}).to_csv(tmp_path / "g.csv", index=False)
    meta = prepare(DataParams(dataset="g.csv", tabular=TabularParams(target="grade")), tmp_path / "prepared")
    assert meta["class_names"] == ["0.123456789", "1.5", "2.000001"]


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
def write_image_folder(
    root: Path, classes: list[str], per_class: int = 6, mixed_sizes: bool = True, seed: int = 0
) -> list[tuple[Path, str]]:
    """RGB PNGs, each class a different dominant colour; sizes differ unless mixed_sizes is False."""
    rng = np.random.default_rng(seed)
    files = []
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (10 + i, 12 + 2 * i) if mixed_sizes else (10, 12)
            pixels = rng.integers(0, 80, (h, w, 3))
            pixels[..., k % 3] += 150
            path = root / name / f"img_{i}.png"
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
            files.append((path, name))
    return files


# Class folders named 0, 1, 2: see test_image_folder_with_named_classes for folders with other names.
NUMERIC_CLASSES = ["0", "1", "2"]


@pytest.mark.parametrize(("color", "channels"), [("grayscale", 1), ("rgb", 3)])
def test_image_folder_resized_to_size_in_the_colour_mode(tmp_path: Path, color: str, channels: int) -> None:
    write_image_folder(tmp_path / "imgs", NUMERIC_CLASSES)
    out = tmp_path / "prepared"
    meta = prepare(DataParams(dataset="imgs", image=ImageParams(size=[8, 8], color=color)), out)

    assert meta["kind"] == "image"
    assert meta["input_shape"] == [channels, 8, 8]
    assert meta["class_names"] == NUMERIC_CLASSES
    assert sum(meta["split_sizes"].values()) == 18
    assert len(meta["normalisation"]["mean"]) == channels
    splits = load_splits(out)
    for s in splits.values():
        assert s["x"].shape[1:] == (channels, 8, 8) and s["x"].dtype == np.float32
    # Files are read class by class in sorted order, so raw row i belongs to class i // 6.
    for s in splits.values():
        assert np.array_equal(s["y"], s["index"] // 6)
    x = splits["train"]["x"]
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)


@pytest.mark.parametrize("classes", [["cat", "dog", "fox"], ["1", "2", "3"]])
def test_image_folder_with_named_classes(tmp_path: Path, classes: list[str]) -> None:
    write_image_folder(tmp_path / "imgs", classes)
    out = tmp_path / "prepared"
    meta = prepare(DataParams(dataset="imgs", image=ImageParams(size=[8, 8])), out)
    assert meta["class_names"] == classes
    for s in load_splits(out).values():
        assert np.array_equal(s["y"], s["index"] // 6)


def test_image_folder_of_mixed_sizes_without_size_names_a_file(tmp_path: Path) -> None:
    files = write_image_folder(tmp_path / "imgs", NUMERIC_CLASSES, mixed_sizes=True)
    with pytest.raises(DataError) as caught:
        prepare(DataParams(dataset="imgs"), tmp_path / "prepared")
    message = str(caught.value)
    assert any(str(f.relative_to(tmp_path)) in message for f, _ in files[1:]), message
    assert "data.image.size" in message
    assert not (tmp_path / "prepared").exists()


def test_image_folder_of_one_size_needs_no_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", NUMERIC_CLASSES, mixed_sizes=False)
    meta = prepare(DataParams(dataset="imgs", image=ImageParams(color="rgb")), tmp_path / "prepared")
    assert meta["input_shape"] == [3, 10, 12]


def image_arrays(n_per_class: int = 10, shape: tuple[int, ...] = (6, 7), seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    x = rng.normal(size=(len(y), *shape)).astype(np.float32) + y.reshape(-1, *([1] * len(shape)))
    return x, y


def test_npz_of_grey_images(tmp_path: Path) -> None:
    x, y = image_arrays(shape=(6, 7))
    np.savez(tmp_path / "images.npz", x=x, y=y)
    out = tmp_path / "prepared"
    meta = prepare(DataParams(dataset="images.npz"), out)
    assert meta["kind"] == "image"
    assert meta["input_shape"] == [1, 6, 7]
    assert meta["class_names"] == ["0", "1", "2"]
    mean, std = meta["normalisation"]["mean"][0], meta["normalisation"]["std"][0]
    for s in load_splits(out).values():
        assert np.array_equal(s["y"], y[s["index"]])
        np.testing.assert_allclose(s["x"][:, 0] * std + mean, x[s["index"]], atol=1e-5)


@pytest.mark.parametrize(("color", "channels"), [("rgb", 3), ("grayscale", 1)])
def test_npz_channels_last(tmp_path: Path, color: str, channels: int) -> None:
    x, y = image_arrays(shape=(6, 7, 3))
    np.savez(tmp_path / "images.npz", x=x, y=y)
    out = tmp_path / "prepared"
    meta = prepare(DataParams(dataset="images.npz", image=ImageParams(color=color)), out)
    assert meta["input_shape"] == [channels, 6, 7]
    if color == "rgb":
        mean, std = (np.array(meta["normalisation"][k], np.float32)[None, :, None, None] for k in ("mean", "std"))
        for s in load_splits(out).values():
            np.testing.assert_allclose(s["x"] * std + mean, x[s["index"]].transpose(0, 3, 1, 2), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------
@needs_sms
def test_sms_corpus_prepared_as_text(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    params = DataParams(dataset=str(SMS), kind="text", text=TextParams(max_len=20))
    meta = prepare(params, out)

    assert meta["kind"] == "text"
    assert meta["class_names"] == ["ham", "spam"]
    assert sum(meta["split_sizes"].values()) == 5574
    assert meta["input_shape"] == [20]
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab[:2] == [PAD, UNK]
    assert meta["vocab_size"] == len(vocab) == len(set(vocab))

    lines = SMS.read_text(encoding="utf-8").splitlines()
    labels = np.array([line.split("\t", 1)[0] for line in lines])
    texts = [line.split("\t", 1)[1] for line in lines]
    tokenizer = Vocabulary(params.text)
    ids = {t: i for i, t in enumerate(vocab)}
    splits = load_splits(out)
    truncated = padded = 0
    for s in splits.values():
        assert s["x"].dtype == np.uint16 and s["x"].shape[1:] == (20,)
        assert np.array_equal(s["y"], (labels[s["index"]] == "spam").astype(np.int64))
        for row, raw in zip(s["x"], s["index"], strict=True):
            tokens = tokenizer.tokenize(texts[raw])
            expected = [ids.get(t, 1) for t in tokens[:20]]
            expected += [0] * (20 - len(expected))  # padded with PAD (0) at the end
            assert row.tolist() == expected
            truncated += len(tokens) > 20
            padded += len(tokens) < 20
    assert truncated > 100 and padded > 100  # both cases really occur
    # Train tokens are all known; unknown tokens (UNK) only come from val/test messages.
    assert not (splits["train"]["x"] == 1).any()
    assert (splits["test"]["x"] == 1).any()
    assert_stratified(splits, (labels == "spam").astype(np.int64), 2)


def small_messages(n: int = 40) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(1)
    words = ["hello", "call", "free", "win", "meet", "later", "today", "prize", "home", "now"]
    labels = ["ham", "spam"] * (n // 2)
    texts = [" ".join(rng.choice(words, 5)) for _ in range(n)]
    return labels, texts


def write_tsv(path: Path, labels: list[str], texts: list[str]) -> None:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in zip(labels, texts, strict=True)), encoding="utf-8")


def test_vocabulary_comes_from_the_training_split_only(tmp_path: Path) -> None:
    labels, texts = small_messages()
    write_tsv(tmp_path / "msgs.tsv", labels, texts)
    prepare(DataParams(dataset="msgs.tsv", kind="text"), tmp_path / "p1")
    first = load_splits(tmp_path / "p1")

    # Splitting depends on the labels alone, so marking the rows of each split keeps the split; each split's rows
    # get a word that appears nowhere else.
    marked = list(texts)
    for split in SPLITS:
        for i in first[split]["index"]:
            marked[i] += f" zz{split}only"
    write_tsv(tmp_path / "msgs.tsv", labels, marked)
    out = tmp_path / "p2"
    prepare(DataParams(dataset="msgs.tsv", kind="text"), out)
    second = load_splits(out)
    for split in SPLITS:
        assert np.array_equal(second[split]["index"], first[split]["index"])

    vocab = json.loads((out / "vocab.json").read_text())
    assert "zztrainonly" in vocab
    assert "zzvalonly" not in vocab and "zztestonly" not in vocab
    # The marker is the 6th token of every val/test message: encoded as UNK there.
    for split in ("val", "test"):
        assert np.all(second[split]["x"][:, 5] == 1)
    assert np.all(second["train"]["x"][:, 5] == vocab.index("zztrainonly"))


def test_vocabulary_order_min_freq_and_max_vocab() -> None:
    texts = ["a a a a b b b c c d", "a b c", "e"]  # counts: a 5, b 4, c 3, d 1, e 1
    full = Vocabulary(TextParams()).fit(texts)
    assert full.tokens == [PAD, UNK, "a", "b", "c", "d", "e"]

    frequent = Vocabulary(TextParams(min_freq=3)).fit(texts)
    assert frequent.tokens == [PAD, UNK, "a", "b", "c"]

    capped = Vocabulary(TextParams(max_vocab=4)).fit(texts)  # PAD and UNK count towards max_vocab
    assert capped.tokens == [PAD, UNK, "a", "b"]
    assert capped.transform(["a c zz"]).tolist()[0][:4] == [2, 1, 1, 0]


def test_min_freq_and_max_vocab_through_prepare(tmp_path: Path) -> None:
    labels, texts = small_messages()
    write_tsv(tmp_path / "msgs.tsv", labels, texts)
    meta = prepare(DataParams(dataset="msgs.tsv", kind="text", text=TextParams(max_vocab=5)), tmp_path / "capped")
    assert meta["vocab_size"] == 5
    assert len(json.loads((tmp_path / "capped" / "vocab.json").read_text())) == 5

    # A word once in one training message: kept with min_freq 1, dropped with min_freq 2.
    train_row = int(load_splits(tmp_path / "capped")["train"]["index"][0])
    rare = list(texts)
    rare[train_row] += " onceonly"
    write_tsv(tmp_path / "msgs.tsv", labels, rare)
    for min_freq, present in ((1, True), (2, False)):
        out = tmp_path / f"min{min_freq}"
        prepare(DataParams(dataset="msgs.tsv", kind="text", text=TextParams(min_freq=min_freq)), out)
        assert train_row in load_splits(out)["train"]["index"]
        vocab = json.loads((out / "vocab.json").read_text())
        assert ("onceonly" in vocab) is present
        assert "hello" in vocab  # frequent words stay


def test_max_len_truncates_and_pads_at_the_end() -> None:
    vocab = Vocabulary(TextParams(max_len=4)).fit(["one two three four five six"])
    assert vocab.transform(["one two three four five six", "two one", "zz"]).tolist() == [
        [vocab.ids["one"], vocab.ids["two"], vocab.ids["three"], vocab.ids["four"]],
        [vocab.ids["two"], vocab.ids["one"], 0, 0],
        [1, 0, 0, 0],
    ]


def tokens(text: str, **options) -> list[str]:
    return Vocabulary(TextParams(**options)).tokenize(text)


def test_tokenizer_options() -> None:
    assert tokens("Hello World") == ["hello", "world"]
    assert tokens("Hello World", lowercase=False) == ["Hello", "World"]

    url = "see http://example.com/x?a=1 and www.test.org now"
    assert tokens(url) == ["see", "and", "now"]
    assert tokens(url, strip_urls=False) == [
        "see",
        "http",
        ":",
        "/",
        "/",
        "example",
        ".",
        "com",
        "/",
        "x",
        "?",
        "a",
        "=",
        "1",
        "and",
        "www",
        ".",
        "test",
        ".",
        "org",
        "now",
    ]

    assert tokens("call 08001234 now 4 u") == ["call", "08001234", "now", "4", "u"]
    assert tokens("call 08001234 now 4 u", strip_numbers=True) == ["call", "now", "u"]

    assert tokens("Hi! Ok, bye...") == ["hi", "!", "ok", ",", "bye", ".", ".", "."]
    assert tokens("Hi! Ok, bye...", strip_punctuation=True) == ["hi", "ok", "bye"]

    assert tokens("Ab c!", tokenizer="char") == ["a", "b", " ", "c", "!"]
    assert tokens("Ab c!", tokenizer="char", lowercase=False, strip_punctuation=True) == ["A", "b", " ", "c", " "]


def test_char_tokenizer_through_prepare(tmp_path: Path) -> None:
    labels, texts = small_messages()
    write_tsv(tmp_path / "msgs.tsv", labels, texts)
    out = tmp_path / "prepared"
    prepare(DataParams(dataset="msgs.tsv", kind="text", text=TextParams(tokenizer="char", max_len=40)), out)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab[:2] == [PAD, UNK]
    assert all(len(t) == 1 for t in vocab[2:])
    assert " " in vocab and set("hello") <= set(vocab)
    x = load_splits(out)["train"]
    first_text = texts[x["index"][0]]
    assert x["x"][0].tolist()[: len(first_text)] == [vocab.index(c) for c in first_text[:40]]


def test_csv_with_header_text_and_label_columns(tmp_path: Path) -> None:
    labels, texts = small_messages()
    frame = pd.DataFrame({"id": range(len(texts)), "message": [t + ", ok" for t in texts], "category": labels})
    frame.to_csv(tmp_path / "msgs.csv", index=False)
    out = tmp_path / "prepared"
    meta = prepare(
        DataParams(dataset="msgs.csv", kind="text", text=TextParams(text_column="message", label_column="category")),
        out,
    )
    assert meta["kind"] == "text"
    assert meta["class_names"] == ["ham", "spam"]
    assert sum(meta["split_sizes"].values()) == len(texts)
    vocab = json.loads((out / "vocab.json").read_text())
    assert "," in vocab and "ok" in vocab  # the quoted comma belongs to the message, not the delimiter
    assert "ham" not in vocab and "spam" not in vocab  # the label column is not text
    for s in load_splits(out).values():
        assert np.array_equal(s["y"], (np.array(labels)[s["index"]] == "spam").astype(np.int64))


def test_header_file_read_in_chunks_loses_no_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.data.text as text

    labels, texts = small_messages()
    pd.DataFrame({"message": texts, "category": labels}).to_csv(tmp_path / "msgs.csv", index=False)
    params = DataParams(
        dataset="msgs.csv", kind="text", text=TextParams(text_column="message", label_column="category")
    )
    prepare(params, tmp_path / "whole")
    monkeypatch.setattr(text, "READ_CHUNK_ROWS", 7)  # 40 rows: six chunks, the last one short
    prepare(params, tmp_path / "chunked")
    whole, chunked = load_splits(tmp_path / "whole"), load_splits(tmp_path / "chunked")
    for name in SPLITS:
        for key in ("x", "y", "index"):
            assert np.array_equal(whole[name][key], chunked[name][key]), (name, key)


def test_unquoted_delimiter_in_a_header_file_is_an_error_not_a_cut_message(tmp_path: Path) -> None:
    labels, texts = small_messages()
    rows = [f"{label},{text}" for label, text in zip(labels, texts, strict=True)]
    rows[30] = "ham,Hello, how are you"  # the comma should have been quoted
    (tmp_path / "msgs.csv").write_text("category,message\n" + "\n".join(rows) + "\n", encoding="utf-8")
    params = DataParams(
        dataset="msgs.csv", kind="text", text=TextParams(text_column="message", label_column="category")
    )
    with pytest.raises(DataError, match=r"msgs.csv: cannot be read as delimited text.*Expected 2 fields"):
        prepare(params, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_message_file_reads_only_the_selected_rows(tmp_path: Path) -> None:
    from pipeline.data.text import MessageFile

    labels, texts = small_messages()
    write_tsv(tmp_path / "msgs.tsv", labels, texts)
    messages = MessageFile(tmp_path / "msgs.tsv", TextParams())
    assert messages.scan(labelled=True).tolist() == labels
    assert len(messages) == 40 and list(messages) == texts
    view = messages[np.array([1, 5, 39])]
    assert len(view) == 3 and list(view) == [texts[1], texts[5], texts[39]]
    assert list(view[np.array([0, 2])]) == [texts[1], texts[39]]  # a view of a view: rows of the view
    with pytest.raises(ValueError, match="increasing"):
        messages[np.array([5, 1])]
    write_tsv(tmp_path / "msgs.tsv", labels[:10], texts[:10])  # the file shrinks between two passes
    with pytest.raises(DataError, match="changed while it was being read"):
        list(view)


def test_token_ids_are_uint16_until_the_vocabulary_outgrows_it() -> None:
    from pipeline.data import model_input

    small = Vocabulary(TextParams(max_len=3)).fit(["a b c"])
    ids = small.transform(["a b c", "c"])
    assert ids.dtype == np.uint16
    widened = model_input(ids)
    assert widened.dtype == np.int32 and np.array_equal(widened, ids)

    last = 70_000  # more ids than uint16 holds
    large = Vocabulary(TextParams(max_len=2), [PAD, UNK, *(f"w{i}" for i in range(2, last + 1))])
    ids = large.transform([f"w{last} w2"])
    assert ids.dtype == np.int32 and ids.tolist() == [[last, 2]]
