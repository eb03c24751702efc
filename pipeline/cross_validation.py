"""k-fold cross-validation (`train.cv_folds`): stratified folds over train + val, each fold one nested MLflow run.

The mean and standard deviation over folds of every validation metric (of each fold's best checkpoint) go to the
parent run as `cv/<metric>_mean` / `_std` and to the DVC metrics file. The final model is trained afterwards,
as configured, on the prepared train split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from mlflow.entities import Metric
from sklearn.model_selection import StratifiedKFold

from pipeline.config import Params
from pipeline.datamodule import InMemoryDataset, PreparedDataModule, load_split
from pipeline.files import write_json
from pipeline.tracking import PARENT_RUN_TAG


def cross_validate(params: Params, prepared_dir: Path, meta: dict[str, Any], parent: Any,
                   checkpoint_dir: Path) -> dict[str, dict[str, float]]:
    from pipeline.train import new_callbacks, new_logger, new_module, new_trainer

    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    x, y = torch.cat([train.x, val.x]), torch.cat([train.y, val.y])
    folds = StratifiedKFold(params.train.cv_folds, shuffle=True, random_state=params.train.seed)
    parent_run = parent.experiment.get_run(parent.run_id)  # creates the parent run now, before its children
    scores = []
    for fold, (fit_idx, val_idx) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        pl.seed_everything(params.train.seed, workers=True, verbose=False)
        logger = new_logger(params, meta, parent_run.data.tags["data.digest"],
                            run_name=f"{parent_run.info.run_name}-fold{fold}",
                            extra_tags={PARENT_RUN_TAG: parent.run_id, "cv.fold": str(fold)})
        checkpoint, callbacks = new_callbacks(params, checkpoint_dir / f"fold{fold}")
        trainer = new_trainer(params, [logger], callbacks, checkpoint_dir / f"fold{fold}")
        data = PreparedDataModule.from_datasets(InMemoryDataset(x[fit_idx], y[fit_idx]),
                                                InMemoryDataset(x[val_idx], y[val_idx]), params.train.batch_size)
        module = new_module(params, meta, y[fit_idx])
        trainer.fit(module, datamodule=data)
        scores.append(trainer.validate(module, datamodule=data, ckpt_path="best", verbose=False)[0])

    summary = {name: {"mean": float(np.mean([s[name] for s in scores])), "std": float(np.std([s[name] for s in
                                                                                               scores]))}
               for name in scores[0]}
    parent.experiment.log_batch(parent.run_id, metrics=[
        Metric(f"cv/{name}_{stat}", value, timestamp=0, step=0)
        for name, stats in summary.items() for stat, value in stats.items()])
    for name, stats in summary.items():
        print(f"cross-validation: {name} {stats['mean']:.4f} ± {stats['std']:.4f} over {len(scores)} folds")
    return summary


def write_cv_metrics(path: Path, folds: int, summary: dict[str, dict[str, float]] | None) -> None:
    """Always written, so DVC finds its metrics file; `folds` 0 or 1 means cross-validation was off."""
    write_json(path, {"folds": folds if summary else 0, **(summary or {})})
