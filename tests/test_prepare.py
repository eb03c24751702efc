"""The prepare stage on the real scikit-learn digits: split sizes, stratification, normalisation, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipeline.config import DataParams
from pipeline.data import read_split
from pipeline.errors import PipelineError
from pipeline.prepare import SPLITS, prepare

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
