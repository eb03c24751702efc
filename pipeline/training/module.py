"""The LightningModule: any `models/` network, a cross-entropy loss, the optimizer and scheduler from params."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.nn import functional
from torchmetrics import Metric

from pipeline.config import TrainParams, resolved
from pipeline.errors import PipelineError


class NonFiniteLoss(PipelineError):
    """The training loss became NaN or infinite."""


class Classifier(pl.LightningModule):
    class_weights: torch.Tensor | None  # a buffer

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        params: TrainParams,
        logged_params: dict[str, Any] | None = None,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net, self.params = net, params
        # Lightning hands hparams to the logger itself, once, on global rank zero after the distributed setup.
        self.save_hyperparameters(logged_params or {})
        self.register_buffer("class_weights", class_weights)  # None: every class counts the same
        # Per-step work is two in-place additions to running counts; values are computed and logged once per epoch.
        # `self.log` on every step costs ~0.7 ms a call on 2 CPU cores, more than a small model's whole step.
        self.train_scores, self.val_scores = EpochScores(num_classes, "train/"), EpochScores(num_classes, "val/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        per_sample = functional.cross_entropy(logits, y, reduction="none")
        # The objective weighs classes when train.class_weights asks; the logged loss is the plain mean cross-entropy
        # per sample, comparable between runs with and without class weights.
        loss = (
            per_sample.mean()
            if self.class_weights is None
            else functional.cross_entropy(logits, y, weight=self.class_weights)
        )
        getattr(self, f"{split}_scores").update(logits.detach().argmax(dim=1), y, per_sample.detach())
        return loss

    def _log_epoch(self, split: str, extra: dict[str, Any] | None = None) -> None:
        scores = getattr(self, f"{split}_scores")
        # compute() already sums every DDP process's counts; sync_dist only averages equal values (once an epoch)
        # and keeps Lightning from warning that epoch values are unsynced. A logged `step` is the step Lightning
        # hands the loggers: the epoch, so MLflow draws every per-epoch chart against the epoch.
        values = scores.compute()
        self.log_dict({**values, **(extra or {}), "step": float(self.current_epoch)}, sync_dist=True)
        # The progress bar shows the epoch's values, not a running mean of the steps.
        self.log_dict(
            {k.replace("/", "_"): v for k, v in values.items() if not k.endswith("f1_macro")},
            prog_bar=True,
            logger=False,
            sync_dist=True,
        )
        scores.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):  # one bad step poisons every weight after it: stop now, not epochs later
            raise NonFiniteLoss(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} (batch "
                f"{batch_idx}). Usual causes: a learning rate too high for this model (train.lr is "
                f"{self.params.lr}; try 10x lower, or set train.gradient_clip_val), or NaN/Inf in the input data "
                "(check the raw data and data.tabular.numeric_impute). The MLflow run is marked FAILED."
            )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # Validation runs after the epoch's last training step, so the train metrics are complete here. Logging
        # them now rather than in on_train_epoch_end puts them in the MLflow run before the epoch's checkpoint is
        # written: a training killed right after a checkpoint then still has every epoch up to it on record.
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            self._log_epoch("train", {"lr": self.epoch_lr})
        self._log_epoch("val")

    def on_train_epoch_start(self) -> None:
        # The rate this epoch trains with: an epoch scheduler has stepped already by the time validation ends. One
        # name whatever the optimizer (Lightning's LearningRateMonitor names it after the optimizer).
        self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def configure_optimizers(self) -> Any:
        p = self.params
        lr, weight_decay = resolved(p.lr), resolved(p.weight_decay)
        optimizer: torch.optim.Optimizer
        if p.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=p.momentum, weight_decay=weight_decay)
        elif p.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)

        if p.scheduler == "none":
            return optimizer
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if p.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=resolved(p.step_size), gamma=p.gamma)
        elif p.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=resolved(p.max_epochs), eta_min=p.min_lr
            )
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=monitor_mode(resolved(p.monitor)),
                factor=p.gamma,
                patience=p.plateau_patience,
                min_lr=p.min_lr,
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": p.monitor},
        }


class EpochScores(Metric):
    """An epoch's mean loss, accuracy and macro F1 (the names of the headline metrics) from running counts.

    A step adds its predictions to a confusion-count matrix and its per-sample losses to a sum, in place on the
    model's device (no host sync); the scores are computed once, from the counts, after summing them across DDP
    processes, so every rank logs the same values. Macro F1 averages over the classes that occur as label or
    prediction, as torchmetrics' MulticlassF1Score and scikit-learn's `f1_score(average="macro")` do."""

    full_state_update = False
    confusion: torch.Tensor  # states, (actual * num_classes + predicted) -> count
    loss_sum: torch.Tensor

    def __init__(self, num_classes: int, prefix: str):
        super().__init__()
        self.num_classes, self.prefix = num_classes, prefix
        self.add_state("confusion", torch.zeros(num_classes * num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, losses: torch.Tensor) -> None:
        # scatter_add_ into a 1-D tensor stays deterministic on CUDA under `trainer.deterministic`, and unlike
        # torch.bincount there it does not read the batch's maximum back to the host
        self.confusion.scatter_add_(0, target * self.num_classes + preds, torch.ones_like(preds))
        self.loss_sum.add_(losses.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.confusion.view(self.num_classes, self.num_classes).float()  # rows actual, columns predicted
        hits, actual, predicted = counts.diagonal(), counts.sum(dim=1), counts.sum(dim=0)
        samples = actual.sum().clamp(min=1)
        f1 = 2 * hits / (actual + predicted).clamp(min=1)  # 2 tp / (2 tp + fp + fn); 0 for a class that never occurs
        occurring = (actual + predicted > 0).sum().clamp(min=1)
        return {
            f"{self.prefix}loss": self.loss_sum / samples,
            f"{self.prefix}accuracy": hits.sum() / samples,
            f"{self.prefix}f1_macro": f1.sum() / occurring,
        }


def monitor_mode(metric: str) -> Literal["min", "max"]:
    return "min" if metric.endswith("loss") else "max"
