"""The file layout the stages share: every file a stage writes, by name, and readers for the ones read back.

    prepared folder (prepare)   {train,val,test}_{x,y,index}.npy, meta.json, input_example.json,
                                preprocessor.skops (tables) or vocab.json (text);
                                image folders: image_files.json instead of the x arrays
    model folder (train)        model.pt, mlflow_run.json
    checkpoint folder (train)   last.ckpt, best.ckpt, resume.json, cv_summary.json
    eval folder (evaluate)      metrics.json, baseline.json, per_class.json, confusion.json, confusion_matrix.png,
                                classification_report.txt

A library module with no heavy imports: stages, the predictor and the MLflow model read the layout from here rather
than from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.files import read_json

# prepared folder
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
EXAMPLE_FILE = "input_example.json"  # a few raw training inputs: the MLflow model's input example
PREPROCESSOR_FILE = "preprocessor.skops"  # tables: the fitted column transformer
PICKLED_PREPROCESSOR_FILE = "preprocessor.joblib"  # what older versions wrote: never loaded, a pickle runs code
VOCAB_FILE = "vocab.json"  # text: the vocabulary
IMAGE_LIST_FILE = "image_files.json"  # image folders: the files, decoded as training takes them (no `x` arrays)

# model folder
MODEL_FILE = "model.pt"
RUN_FILE = "mlflow_run.json"  # the MLflow run evaluate continues

# checkpoint folder
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT_NAME = "best"  # Lightning's ModelCheckpoint `filename`; it adds the suffix
BEST_CHECKPOINT = f"{BEST_CHECKPOINT_NAME}.ckpt"
RESUME_FILE = "resume.json"
CV_SUMMARY_FILE = "cv_summary.json"  # a resumed final fit does not redo the folds

# eval folder
METRICS_FILE = "metrics.json"
BASELINE_FILE = "baseline.json"
PER_CLASS_FILE = "per_class.json"
CONFUSION_PLOT_FILE = "confusion.json"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_FILE = "classification_report.txt"


# One .npy file per array of a split, so that training opens them as memory maps (np.load(mmap_mode="r")) and
# reads the rows of a batch rather than the whole split: inputs, labels, and each row's position in the raw data.
SPLIT_ARRAYS = ("x", "y", "index")


def split_file(split: str, array: str) -> str:
    return f"{split}_{array}.npy"


# What older versions wrote, one archive per split: a rerun replaces the folder, these included.
OLD_SPLIT_FILES = tuple(f"{split}.npz" for split in SPLITS)

# Every file prepare writes for some kind of data (and the old pickled preprocessor and split archives): a rerun may
# replace these, never anything else in the folder.
PREPARED_FILES = (
    *(split_file(split, array) for split in SPLITS for array in SPLIT_ARRAYS),
    *OLD_SPLIT_FILES,
    META_FILE,
    EXAMPLE_FILE,
    PREPROCESSOR_FILE,
    PICKLED_PREPROCESSOR_FILE,
    VOCAB_FILE,
    IMAGE_LIST_FILE,
)
# What prediction needs of the prepared folder (not the splits): bundled with the MLflow model.
PREPROCESSING_FILES = (META_FILE, PREPROCESSOR_FILE, VOCAB_FILE, EXAMPLE_FILE)
EVAL_FILES = (METRICS_FILE, BASELINE_FILE, PER_CLASS_FILE, CONFUSION_PLOT_FILE, CONFUSION_PNG, REPORT_FILE)


@dataclass(frozen=True)
class RunFile:
    """mlflow_run.json: the run train logged and its store (the URI masked)."""

    run_id: str
    tracking_uri: str | None


def read_meta(prepared_dir: Path) -> dict[str, Any]:
    path = prepared_dir / META_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found. Run the prepare stage first (dvc repro prepare).")
    return read_json(path)


def open_split(prepared_dir: Path, split: str, array: str) -> Any:
    """One array of a prepared split as a read-only memory map: nothing is read until rows are indexed."""
    import numpy as np

    path = prepared_dir / split_file(split, array)
    if not path.is_file():
        old = prepared_dir / f"{split}.npz"
        why = f" ({old.name} is from an older version)" if old.is_file() else ""
        raise PipelineError(f"{path}: not found{why}. Run the prepare stage (dvc repro prepare --force).")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def model_path(model_dir: Path) -> Path:
    """The trained model's file, which must exist."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found. Run the train stage first (dvc repro train).")
    return path


def read_run_file(model_dir: Path) -> RunFile:
    path = model_dir / RUN_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found. Run the train stage first (dvc repro).")
    data = read_json(path)
    return RunFile(data["run_id"], data.get("tracking_uri"))
