"""The Lightning pieces a training is built from, the same for the train stage, its cross-validation folds and the
tuning trials: the MLflow logger, the LightningModule around a `models/` network, the callbacks and the Trainer.

Imports Lightning: the stages import this module only once params and inputs are checked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from sklearn.utils.class_weight import compute_class_weight

from models.registry import build_model
from pipeline import console, tracking
from pipeline.artifacts import BEST_CHECKPOINT_NAME
from pipeline.config import Params, config_hash, resolved, used_params
from pipeline.training.checkpoints import AtomicCheckpointIO, RandomStateCheckpoint
from pipeline.training.module import Classifier, monitor_mode

DEFAULTS_KIND_TAG = "defaults.kind"  # the kind of data whose defaults `auto` took
AUTO_IMAGE_WORKERS = 2  # image folders decoded in this many DataLoader processes, fewer on fewer cores
AUTO_KEYS_TAG = "defaults.auto_keys"  # the keys that took them (comma-separated); their values are the run's params


def model_hparams(params: Params) -> dict[str, Any]:
    return dataclasses.asdict(getattr(params.model, params.model.name))


def new_logger(
    params: Params,
    meta: dict[str, Any],
    digest: str,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> MLFlowLogger:
    """An MLFlowLogger; it creates its run on global rank zero when first used."""
    uri = tracking.tracking_uri(params.mlflow)
    return MLFlowLogger(
        experiment_name=params.mlflow.experiment_name,
        run_name=run_name or tracking.run_name(params, meta["kind"]),
        tracking_uri=uri,
        artifact_location=tracking.artifact_location(uri),
        tags={
            **tracking.run_tags(meta["dataset"], digest, params.model.name),
            **(extra_tags or {}),
            tracking.CONFIG_HASH_TAG: config_hash(params),
            **auto_tags(params),
        },
        log_model=False,  # model.pt is logged by fit; checkpoints stay DVC outputs
    )


def auto_tags(params: Params) -> dict[str, str]:
    """Which keys `auto` resolved, and for which kind of data (their values are the run's params)."""
    if not params.auto_keys:
        return {}
    return {DEFAULTS_KIND_TAG: params.defaults_kind, AUTO_KEYS_TAG: ",".join(params.auto_keys)}


def new_module(params: Params, meta: dict[str, Any], train_labels: Any) -> Classifier:
    net = build_model(
        params.model.name,
        model_hparams(params),
        meta["input_shape"],
        meta["num_classes"],
        meta.get("vocab_size"),
        meta.get("categorical_cardinalities"),
    )
    # Only what this run reads (evaluate.* may change without retraining; evaluate logs those itself).
    run_params = used_params(params, meta["kind"])
    weights = (
        balanced_class_weights(train_labels, meta["num_classes"]) if params.train.class_weights == "balanced" else None
    )
    return Classifier(net, meta["num_classes"], params.train, logged_params=run_params, class_weights=weights)


def new_callbacks(params: Params, checkpoint_dir: Path) -> tuple[ModelCheckpoint, list[pl.Callback]]:
    """The best-checkpoint callback (returned apart: fit reloads its best weights), plus the others."""
    monitor = resolved(params.train.monitor)
    mode = monitor_mode(monitor)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=BEST_CHECKPOINT_NAME,
        monitor=monitor,
        mode=mode,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[pl.Callback] = [checkpoint, RandomStateCheckpoint()]  # the module logs the learning rate, as `lr`
    if params.trainer.progress_bar:
        callbacks.append(console.progress_bar())
    if params.train.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=params.train.early_stopping_patience))
    if params.train.ema_decay:
        # An exponential moving average of the weights over steps: validated, checkpointed and saved in their place,
        # so the kept model does not hinge on the last few noisy steps before the best epoch.
        callbacks.append(EMAWeightAveraging(decay=params.train.ema_decay))
    return checkpoint, callbacks


def new_trainer(params: Params, loggers: list, callbacks: list, root_dir: Path) -> pl.Trainer:
    t = params.trainer
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,  # type: ignore[arg-type]  # a str the schema has checked against Lightning's names
        deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar,
        log_every_n_steps=t.log_every_n_steps,
        max_epochs=params.train.max_epochs,
        gradient_clip_val=params.train.gradient_clip_val,
        callbacks=[*callbacks, tracking.outage_callback()],
        logger=loggers,
        default_root_dir=root_dir,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,  # the network's size is in its MLflow params
    )


def loading(params: Params, meta: dict[str, Any]) -> tuple[int, bool]:
    """DataLoader worker processes (trainer.num_workers) and whether batches go to pinned memory (on a GPU)."""
    workers = params.trainer.num_workers
    if workers == "auto":
        from pipeline.training.threads import available_cores

        lazy = meta.get("storage") == "image_files"
        workers = min(AUTO_IMAGE_WORKERS, available_cores()) if lazy else 0
    pin = params.trainer.accelerator != "cpu" and torch.cuda.is_available()
    return int(workers), pin


def balanced_class_weights(labels: Any, num_classes: int) -> torch.Tensor:
    """n_samples / (n_classes * count) per class (scikit-learn's 'balanced'), from the training labels."""
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(labels))
    return torch.tensor(weights, dtype=torch.float32)
