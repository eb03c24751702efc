"""k-fold cross-validation (`train.cv_folds`): stratified folds over train + val, each fold one nested MLflow run.

The mean and standard deviation over folds of every validation metric (of each fold's best checkpoint) go to the
parent run as `cv/<metric>_mean` / `_std` (`cv/val/accuracy_mean`) and, by the same names, to a DVC metrics file
that exists only when cross-validation ran. The final model is trained afterwards,
as configured, on the prepared train split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from mlflow.entities import Metric
from sklearn.model_selection import StratifiedKFold

from pipeline import console
from pipeline.config import Params, resolved
from pipeline.files import write_json
from pipeline.tracking import PARENT_RUN_TAG
from pipeline.training.builders import loading, new_callbacks, new_logger, new_module, new_trainer
from pipeline.training.datamodule import JoinedRows, PreparedDataModule, load_split, split_labels

log = console.get_logger(__name__)


def cross_validate(
    params: Params, prepared_dir: Path, meta: dict[str, Any], parent: Any, checkpoint_dir: Path
) -> dict[str, dict[str, float]]:
    # The inputs stay where they are (memory maps, image files); the labels, small, are read to draw the folds.
    splits = [load_split(prepared_dir, "train"), load_split(prepared_dir, "val")]
    y = np.concatenate([split_labels(prepared_dir, "train"), split_labels(prepared_dir, "val")])
    folds = StratifiedKFold(params.train.cv_folds, shuffle=True, random_state=params.train.seed)
    parent_run = parent.experiment.get_run(parent.run_id)  # creates the parent run now, before its children
    scores = []
    for fold, (fit_idx, val_idx) in enumerate(folds.split(np.zeros(len(y)), y)):
        pl.seed_everything(params.train.seed, workers=True, verbose=False)
        logger = new_logger(
            params,
            meta,
            parent_run.data.tags["data.digest"],
            run_name=f"{parent_run.info.run_name} fold{fold}",
            extra_tags={PARENT_RUN_TAG: parent.run_id, "cv.fold": str(fold)},
        )
        _checkpoint, callbacks = new_callbacks(params, checkpoint_dir / f"fold{fold}")
        trainer = new_trainer(params, [logger], callbacks, checkpoint_dir / f"fold{fold}")
        data = PreparedDataModule.of_splits(
            JoinedRows(splits, fit_idx),
            JoinedRows(splits, val_idx),
            resolved(params.train.batch_size),
            *loading(params, meta),
        )
        module = new_module(params, meta, y[fit_idx])
        trainer.fit(module, datamodule=data)
        validated = trainer.validate(module, datamodule=data, ckpt_path="best", verbose=False)[0]
        scores.append({k: v for k, v in validated.items() if k.startswith("val/")})  # not the logged `step`

    summary = {
        name: {"mean": float(np.mean([s[name] for s in scores])), "std": float(np.std([s[name] for s in scores]))}
        for name in scores[0]
    }
    parent.experiment.log_batch(
        parent.run_id,
        metrics=[Metric(name, value, timestamp=0, step=0) for name, value in flat_summary(summary).items()],
    )
    for name, stats in summary.items():
        log.info(f"cross-validation: {name} {stats['mean']:.4f} ± {stats['std']:.4f} over {len(scores)} folds")
    return summary


def flat_summary(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'val/accuracy': {'mean': m, 'std': s}} -> {'cv/val/accuracy_mean': m, 'cv/val/accuracy_std': s}."""
    return {f"cv/{name}_{stat}": value for name, stats in summary.items() for stat, value in stats.items()}


NOT_RUN_MARKER = ".cv_off"  # listed in .dvcignore


def write_cv_metrics(path: Path, folds: int, summary: dict[str, dict[str, float]] | None) -> None:
    """The summary with the MLflow names, only when cross-validation ran. The folder always exists: it is the DVC
    metrics output, and without a metrics file it adds no row of dashes to `dvc metrics show`. When it holds no
    metrics file it holds NOT_RUN_MARKER (in .dvcignore): DVC would otherwise warn on every `dvc repro` that the
    folder is empty, which the user cannot act on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if summary:
        write_json(path, {"cv/folds": folds, **flat_summary(summary)})
    else:
        (path.parent / NOT_RUN_MARKER).write_text("cross-validation was off (train.cv_folds < 2)\n")
