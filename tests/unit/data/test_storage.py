"""How prepared splits are stored and read: memory-mapped arrays read a batch at a time, image folders decoded as
batches are taken, tables prepared chunk by chunk."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.artifacts import IMAGE_LIST_FILE
from pipeline.config import DataParams, ImageParams
from pipeline.data import read_split
from pipeline.stages.prepare import prepare


def test_a_split_is_read_through_a_memory_map_a_batch_at_a_time(tmp_path: Path) -> None:
    from pipeline.training.datamodule import MappedSplit, batches, load_split

    prepare(DataParams(), tmp_path / "prepared")
    split = load_split(tmp_path / "prepared", "train")
    assert isinstance(split, MappedSplit)
    assert isinstance(split.x, np.memmap) and isinstance(split.y, np.memmap)  # not arrays loaded whole
    whole = read_split(tmp_path / "prepared", "train")
    x, y = split.__getitems__([40, 3, 17])
    # a batch's rows are gathered in file order, inputs and labels alike
    np.testing.assert_array_equal(x.numpy(), whole["x"][[3, 17, 40]])
    np.testing.assert_array_equal(y.numpy(), whole["y"][[3, 17, 40]])
    # a DataLoader worker is sent where the files are, not their contents
    assert len(pickle.dumps(split)) < 1000
    copy = pickle.loads(pickle.dumps(split))
    assert isinstance(copy.x, np.memmap)
    seen = np.concatenate([yb.numpy() for _, yb in batches(split, 100, num_workers=1)])
    np.testing.assert_array_equal(seen, whole["y"])


def write_images(root: Path, per_class: int = 7) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b", "c"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (9 + i % 3, 11, 3))
            pixels[..., k] += 160
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(root / name / f"{i}.png")


@pytest.mark.parametrize("color", ["grayscale", "rgb"])
def test_lazily_decoded_images_equal_the_images_decoded_whole(tmp_path: Path, monkeypatch, color: str) -> None:
    from pipeline.data.image import _read_image
    from pipeline.training.datamodule import batches, load_split

    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "imgs")
    meta = prepare(DataParams(dataset="imgs", image=ImageParams(size=[8, 8], color=color)), tmp_path / "prepared")
    assert meta["storage"] == "image_files"
    assert (tmp_path / "prepared" / IMAGE_LIST_FILE).is_file()
    assert not (tmp_path / "prepared" / "train_x.npy").exists()  # no decoded copy of the folder

    files = sorted((tmp_path / "imgs").rglob("*.png"))  # class by class, as prepare lists them
    decoded = np.stack([_read_image(f, color, [8, 8], resize=True) for f in files])  # what prepare held before
    train_index = read_split(tmp_path / "prepared", "train")["index"]
    train = decoded[train_index]
    # the statistics, summed file by file, are those of the whole decoded training array
    np.testing.assert_allclose(meta["normalisation"]["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(meta["normalisation"]["std"], train.std(axis=(0, 2, 3)), rtol=1e-4)
    mean = np.array(meta["normalisation"]["mean"], np.float32)[None, :, None, None]
    std = np.array(meta["normalisation"]["std"], np.float32)[None, :, None, None]
    for name in ("train", "val", "test"):
        arrays = read_split(tmp_path / "prepared", name)
        split = load_split(tmp_path / "prepared", name)
        x, y = zip(*batches(split, 4, num_workers=1), strict=True)  # decoded in a worker process
        np.testing.assert_allclose(np.concatenate(x), (decoded[arrays["index"]] - mean) / std, atol=1e-5)
        np.testing.assert_array_equal(np.concatenate(y), arrays["y"])


def write_table(path: Path, rows: int = 90) -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "size": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(5, 2, rows)),
            "count": rng.integers(0, 9, rows),
            "colour": rng.choice(["red", "green", "blue", None], rows),
            "when": pd.date_range("2024-01-01", periods=rows, freq="D").strftime("%Y-%m-%d"),
            "label": rng.choice(["yes", "no", "maybe"], rows),
        }
    )
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)


@pytest.mark.parametrize("name", ["t.csv", "t.parquet"])
@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
def test_a_table_prepared_in_tiny_chunks_equals_it_prepared_whole(
    tmp_path: Path, monkeypatch, name: str, encoding: str
) -> None:
    from pipeline.config import TabularParams

    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / name)
    metas = {}
    for folder, chunk_rows in (("whole", 10_000), ("chunked", 7)):  # 90 rows: 13 chunks, the last one short
        tabular = TabularParams(target="label", categorical_encoding=encoding, chunk_rows=chunk_rows)
        metas[folder] = prepare(DataParams(dataset=name, tabular=tabular), tmp_path / folder)
    assert metas["whole"] == metas["chunked"]
    assert metas["whole"]["feature_summary"]["dates"] == {"when": "ISO8601"}
    assert (tmp_path / "whole" / "input_example.json").read_text() == (
        tmp_path / "chunked" / "input_example.json"
    ).read_text()
    for split in ("train", "val", "test"):
        whole, chunked = read_split(tmp_path / "whole", split), read_split(tmp_path / "chunked", split)
        for array in ("x", "y", "index"):
            np.testing.assert_array_equal(whole[array], chunked[array], err_msg=f"{split} {array}")


def test_the_preprocessing_is_fitted_on_a_bounded_sample_of_the_training_rows(tmp_path: Path, monkeypatch) -> None:
    from pipeline.config import TabularParams

    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv", rows=300)
    tabular = TabularParams(target="label", chunk_rows=50, fit_rows=40)
    meta = prepare(DataParams(dataset="t.csv", tabular=tabular), tmp_path / "prepared")
    assert meta["feature_summary"]["rows"] == 40  # what the preprocessing learnt from
    assert sum(meta["split_sizes"].values()) == 300  # every row is prepared all the same
    train = read_split(tmp_path / "prepared", "train")
    assert len(train["x"]) == meta["split_sizes"]["train"] and np.isfinite(train["x"]).all()


def test_a_column_that_changes_type_after_the_first_block_is_read_as_a_whole_file_read_types_it(
    tmp_path: Path, monkeypatch
) -> None:
    from pipeline.config import TabularParams

    monkeypatch.chdir(tmp_path)
    rows = 200_000  # 3.4 MB: pyarrow types the columns from its first blocks, the changes come later
    rng = np.random.default_rng(0)
    lines = ["count,grade,size,label"]
    for i in range(rows):
        last = i >= rows - 3
        grade = ["a", "b", "c"][i % 3] if last else str(i % 3)  # numbers, then text
        count = f"{i % 7}.5" if last else str(i % 7)  # integers, then a decimal
        lines.append(f"{count},{grade},{rng.normal():.6f},{'yes' if i % 2 else 'no'}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    meta = prepare(DataParams(dataset="t.csv", tabular=TabularParams(target="label")), tmp_path / "prepared")
    summary = meta["feature_summary"]
    assert summary["numeric"] == ["count", "size"]
    assert set(summary["categorical"]) == {"grade"}
    assert sum(meta["split_sizes"].values()) == rows
