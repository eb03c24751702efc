"""The LightningModule: any `models/` network, a cross-entropy loss, the optimizer and scheduler from params."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from pipeline.config import TrainParams


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, num_classes: int, params: TrainParams,
                 logged_params: dict[str, Any] | None = None):
        super().__init__()
        self.net, self.params = net, params
        # Lightning hands hparams to the logger itself, once, on global rank zero after the distributed setup.
        self.save_hyperparameters(logged_params or {})
        self.loss = nn.CrossEntropyLoss()
        # torchmetrics objects accumulate over the epoch and synchronise across DDP processes themselves.
        self.metrics = nn.ModuleDict({
            f"{split}_{name}": metric
            for split in ("train", "val")
            for name, metric in (("acc", MulticlassAccuracy(num_classes, average="micro")),
                                 ("f1", MulticlassF1Score(num_classes, average="macro")))
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        preds = logits.argmax(dim=1)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        for name in ("acc", "f1"):
            metric = self.metrics[f"{split}_{name}"]
            metric.update(preds, y)
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        p = self.params
        if p.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        elif p.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=p.lr, weight_decay=p.weight_decay)

        if p.scheduler == "none":
            return optimizer
        if p.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.step_size, gamma=p.gamma)
        elif p.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.max_epochs, eta_min=p.min_lr)
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=monitor_mode(p.monitor), factor=p.gamma, patience=p.plateau_patience,
                min_lr=p.min_lr)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": p.monitor}}


def monitor_mode(metric: str) -> str:
    return "min" if metric.endswith("loss") else "max"
