"""What the stages show on the console: their own lines and Lightning's progress bar, not library chatter.

Each filter below names one message the user can do nothing about (a banner, a tip, a deprecation inside a
library), by logger, message or category. Warnings about the user's data or params still show.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

# (message regex, category, module regex) of warnings raised inside libraries, not by anything in params.yaml.
LIBRARY_WARNINGS = (
    (r".*LeafSpec.*", FutureWarning, ""),  # torch.utils._pytree, reached through Lightning
    (r".*LeafSpec.*", DeprecationWarning, ""),
    (r".*Checkpoint directory .* exists and is not empty.*", UserWarning, ""),  # ours: resumable by design
)
# Loggers whose INFO lines are banners: GPU/TPU availability, "Seed set", the litlogger and litmodels tips.
QUIET_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)


def quiet_libraries() -> None:
    """Install the filters; call once at the start of a stage, before the libraries are imported."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level when imported
    for message, category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def progress_bar() -> Any:
    """Lightning's bar with the epoch's train/val loss and accuracy, without the logger's version (`v_num`)."""
    from pytorch_lightning.callbacks import TQDMProgressBar

    class EpochProgressBar(TQDMProgressBar):
        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return EpochProgressBar()
