"""Resuming an interrupted training from its last checkpoint.

The checkpoint folder is a `persist: true` DVC output, so it survives a killed stage. Beside Lightning's `last.ckpt`
it holds `resume.json`: a fingerprint of everything that shapes training (the params sections train reads except
display and tracking keys, the prepared data's digest, and the train stage's code), the MLflow run of the attempt, and
whether that attempt finished. The next `dvc repro` resumes only an unfinished attempt with the same fingerprint;
anything else starts over in an emptied folder, so a checkpoint never leaks into a different experiment (a
`dvc exp run` in the workspace finds the previous experiment's checkpoints there).

Lightning restores weights, optimizer, scheduler, loop counters and callback state (best score, early-stopping
patience) from `last.ckpt`. It does not restore the global random generators that draw the shuffle order and dropout
masks, so `RandomStateCheckpoint` stores them in every checkpoint: a resumed run then takes exactly the steps an
uninterrupted one would have taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from pipeline import console
from pipeline.artifacts import BEST_CHECKPOINT, LAST_CHECKPOINT, RESUME_FILE
from pipeline.config import Params, to_flat_dict
from pipeline.errors import PipelineError
from pipeline.files import TMP_MARK, read_json, write_json

log = console.get_logger(__name__)

# The train stage's code dependencies in dvc.yaml (a test keeps the two lists equal): a change there makes old
# checkpoints unusable, so training starts over.
TRAINING_CODE = (
    "pipeline/stages/train.py",
    "pipeline/training/builders.py",
    "pipeline/training/checkpoints.py",
    "pipeline/training/datamodule.py",
    "pipeline/data",
    "pipeline/training/module.py",
    "pipeline/training/trained_model.py",
    "pipeline/training/cross_validation.py",
    "pipeline/artifacts.py",
    "pipeline/training/threads.py",
    "pipeline/defaults.py",
    "models",
)
# Keys of the declared sections that do not change what is trained.
NOT_FINGERPRINTED = (
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.num_threads",
    "trainer.num_workers",
)
FINGERPRINTED_SECTIONS = ("model.", "train.", "trainer.")


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    run_id: str | None  # the interrupted attempt's MLflow run
    tracking_uri: str | None
    epochs: int = 0  # epochs the interrupted attempt completed
    step: int = 0  # optimizer steps it took: its metrics logged before this step are carried over


def fingerprint(params: Params, data_digest: str) -> str:
    flat = {
        k: v
        for k, v in to_flat_dict(params).items()
        if k.startswith(FINGERPRINTED_SECTIONS) and k not in NOT_FINGERPRINTED
    }
    digest = hashlib.sha256(json.dumps({"params": flat, "data": data_digest}, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parents[2]
    for entry in TRAINING_CODE:
        sources = sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]
        for source in sources:
            digest.update(source.relative_to(root).as_posix().encode() + source.read_bytes())
    return digest.hexdigest()


def read_attempt(checkpoint_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(checkpoint_dir / RESUME_FILE)
    except (OSError, ValueError):  # none yet, or cut short while being written
        return None


def find_resume_point(checkpoint_dir: Path, expected_fingerprint: str, tracking_uri: str) -> ResumePoint | None:
    """The unfinished attempt to continue, or None. Only reads, so every DDP process reaches the same answer."""
    return _resume_decision(checkpoint_dir, expected_fingerprint, tracking_uri)[0]


def _resume_decision(
    checkpoint_dir: Path, expected_fingerprint: str, tracking_uri: str
) -> tuple[ResumePoint | None, str]:
    """The point to resume from, else None and why not ("" when there is no unfinished attempt to speak of).

    Same fingerprint, and the same tracking store: the resumed run carries the interrupted run's metrics over, which
    it can only read from the store that holds them. resume.json holds the store's URI masked (see tracking.py), so
    masked forms are compared. A last.ckpt that cannot be read gives way to best.ckpt: every checkpoint holds the
    random state too, so training from an earlier epoch takes the same steps again."""
    from pipeline.uris import masked_uri

    attempt = read_attempt(checkpoint_dir)
    last, best = checkpoint_dir / LAST_CHECKPOINT, checkpoint_dir / BEST_CHECKPOINT
    if not attempt or attempt.get("finished") or not (last.is_file() or best.is_file()):
        return None, ""
    if attempt.get("fingerprint") != expected_fingerprint:
        return None, "its params, prepared data or training code differ from these"
    if attempt.get("tracking_uri") != masked_uri(tracking_uri):
        return None, f"it was tracked in another MLflow store ({attempt.get('tracking_uri')})"
    unreadable = []
    for checkpoint in (last, best):
        if not checkpoint.is_file():
            continue
        try:
            progress = checkpoint_progress(checkpoint)
        except Exception:  # cut short while being written (torch raises several types)
            unreadable.append(checkpoint.name)
            continue
        if unreadable:
            log.info(
                f"train: {last} cannot be read (cut short while being written: a full disk or a kill?); resuming "
                f"from {checkpoint} instead."
            )
        return ResumePoint(checkpoint, attempt.get("run_id"), attempt.get("tracking_uri"), *progress), ""
    return None, (
        f"its checkpoint(s) {' and '.join(unreadable)} cannot be read (cut short while being written: a "
        "full disk or a kill?)"
    )


def resume_or_start_over(checkpoint_dir: Path, expected_fingerprint: str, tracking_uri: str) -> ResumePoint | None:
    """The attempt to continue; else None, with the folder emptied for a fresh start by rank zero.

    Rank zero also ends the previous attempt's run KILLED if it was left RUNNING: an attempt killed before its first
    checkpoint or not resumable, or a finished training whose evaluate was killed (SIGKILL, SIGTERM, out of memory)
    while it held the run."""
    resume, why_not = _resume_decision(checkpoint_dir, expected_fingerprint, tracking_uri)
    if resume:
        log.info(f"train: resuming after epoch {resume.epochs} from {resume.checkpoint} (run {resume.run_id})")
        return resume
    if not console.launched_as_global_zero():
        return None
    attempt = read_attempt(checkpoint_dir)
    if attempt:
        from pipeline import tracking

        if attempt.get("run_id") and attempt.get("tracking_uri") == tracking.masked_uri(tracking_uri):
            from mlflow import MlflowClient

            tracking.end_if_running(MlflowClient(tracking_uri), attempt["run_id"])
        if why_not:
            log.info(f"train: not resuming the interrupted training in {checkpoint_dir}: {why_not}. Starting over.")
    if checkpoint_dir.is_dir():  # a stale best.ckpt or last.ckpt belongs to another attempt
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True)
    return None


def record_attempt(
    checkpoint_dir: Path, fingerprint_: str, run_id: str, tracking_uri: str, finished: bool = False
) -> None:
    """resume.json; the store's URI masked: the folder is a DVC output, cached and pushed."""
    from pipeline.uris import masked_uri

    write_json(
        checkpoint_dir / RESUME_FILE,
        {"fingerprint": fingerprint_, "run_id": run_id, "tracking_uri": masked_uri(tracking_uri), "finished": finished},
    )


def checkpoint_progress(path: Path) -> tuple[int, int]:
    """(epochs completed, optimizer steps taken) stored in a Lightning checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    return int(state["epoch"]) + 1, int(state["global_step"])


class RandomStateCheckpoint(pl.Callback):
    """Saves and restores the global random generators of torch, numpy and Python with each checkpoint.

    Stored as tensors and plain types only: Lightning loads checkpoints with `torch.load(weights_only=True)`."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=False)
        numpy_state["state"] = {**numpy_state["state"], "key": torch.from_numpy(numpy_state["state"]["key"].copy())}
        version, internal, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": numpy_state,
            "python": [version, list(internal), gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(
            {**numpy_state, "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].numpy()}}
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all.

    Lightning writes a checkpoint to a temporary file in the system's temporary folder and moves it into place;
    across file systems that move is a copy, and a full disk leaves the checkpoint truncated. Here it is written to
    a temporary file beside it, flushed to disk, and renamed over the previous one: a failed write leaves the
    previous checkpoint as it was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                torch.save(checkpoint, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            failed_write = exc if isinstance(exc, OSError) else exc.__context__  # torch wraps it in a RuntimeError
            if isinstance(failed_write, OSError):
                raise PipelineError(
                    f"{path}: the checkpoint could not be written ({failed_write.strerror or exc}); "
                    "the previous one is kept. Free disk space, then rerun: training resumes from "
                    "it."
                ) from None
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """The rename itself reaches the disk (a power loss right after would otherwise lose it)."""
    with suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
