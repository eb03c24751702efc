"""Raw data in, model-ready arrays out: one module per kind of data.

Each kind module provides `load_raw(params) -> RawData` (the labels, and the inputs: in memory when small, else a
reader that leaves them on disk), a preprocessor that is fitted on the training split only and saved beside the
prepared arrays, and `read_new(path, ...)` for the prediction command, which must read new data exactly as training
data was read. The readers of prepared splits at the end of this module serve evaluate and the baseline.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.config import DataParams
from pipeline.errors import PipelineError


class DataError(PipelineError):
    """A data file is missing, unreadable or does not fit the params; the message names the file."""


@dataclass
class RawData:
    # images: float32 (n, channels, height, width), or an ImageFileList for a folder; tables: a DataFrame of
    # features (built-ins), or a TableFile read in chunks; text: MessageFile
    inputs: Any
    labels: np.ndarray  # one raw label per row, any type
    class_names: list[str] | None = None  # built-ins know theirs; otherwise the sorted distinct labels


class Preprocessor(Protocol):
    def fit(self, inputs: Any) -> Preprocessor: ...
    def transform(self, inputs: Any) -> np.ndarray: ...
    def describe(self) -> dict[str, Any]: ...  # goes into meta.json: input_shape, vocab_size, ...
    def save(self, folder: Path) -> None: ...


def kind_module(kind: str) -> Any:
    return importlib.import_module(f"pipeline.data.{kind}")


def load_raw(params: DataParams) -> RawData:
    return kind_module(params.resolved_kind).load_raw(params)


def new_preprocessor(params: DataParams) -> Preprocessor:
    return kind_module(params.resolved_kind).new_preprocessor(params)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> Preprocessor:
    return kind_module(meta["kind"]).load_preprocessor(prepared_dir, meta)


def take(inputs: Any, index: np.ndarray) -> Any:
    """Rows `index` (increasing, as the splits are) of any kind's inputs."""
    if hasattr(inputs, "iloc"):
        return inputs.iloc[index]
    if isinstance(inputs, list):
        return [inputs[i] for i in index]
    return inputs[index]


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: not found. Fix data.dataset in params.yaml (paths are relative to the repository "
            "root), or add the file there."
        )
    if path.is_file() and path.stat().st_size == 0:  # each reader would say it differently, none what to do
        raise DataError(
            f"{path}: cannot be read: the file is empty (0 bytes). Write the data into it, or point "
            "data.dataset in params.yaml at another file."
        )
    return path


def model_input(x: np.ndarray) -> np.ndarray:
    """Prepared arrays as a model takes them: token ids are stored as uint16, and torch's embeddings index with
    int32 or int64 only."""
    return x.astype(np.int32) if x.dtype == np.uint16 else x


def split_rows(prepared_dir: Path, split: str, rows: np.ndarray) -> np.ndarray:
    """The prepared inputs of rows `rows` (increasing) of a split: gathered from its memory map, or, for an image
    folder, decoded from the files."""
    return _split_reader(prepared_dir, split)(rows)


def read_split(prepared_dir: Path, split: str) -> dict[str, np.ndarray]:
    """A split's arrays (x, y, index) read whole, an image folder's x decoded: for small data sets (tests, benches);
    training reads a batch at a time."""
    from pipeline.artifacts import open_split

    arrays = {array: np.array(open_split(prepared_dir, split, array)) for array in ("y", "index")}
    return {"x": split_rows(prepared_dir, split, np.arange(len(arrays["y"]))), **arrays}


def split_inputs(prepared_dir: Path, split: str, rows: int) -> Iterator[np.ndarray]:
    """A split's prepared inputs in order, `rows` at a time: never the whole split in memory."""
    from pipeline.artifacts import open_split

    size, read = len(open_split(prepared_dir, split, "y")), _split_reader(prepared_dir, split)
    for start in range(0, size, rows):
        yield read(np.arange(start, min(start + rows, size)))


def _split_reader(prepared_dir: Path, split: str) -> Callable[[np.ndarray], np.ndarray]:
    from pipeline.artifacts import open_split, read_meta

    meta = read_meta(prepared_dir)
    if meta.get("storage") == "image_files":  # the kind module decodes its files
        return kind_module(meta["kind"]).ImageFiles.of_split(prepared_dir, split, meta).inputs
    x = open_split(prepared_dir, split, "x")
    return lambda rows: np.asarray(x[rows])
