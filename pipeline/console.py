"""What the stages show on the console: their own lines and Lightning's progress bar, not library chatter.

The stages' own lines go through `logging` (`get_logger(__name__)`): INFO to stdout, warnings to stderr, from
global rank zero only, so a DDP run says "resuming from ..." once, not once per process. Each filter below names one
message the user can do nothing about (a banner, a tip, a deprecation inside a library), by logger, message or
category. Warnings about the user's data or params still show.
"""

from __future__ import annotations

import logging
import os
import sys
import time
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


# Environment variables launchers set on processes other than global rank zero (torchrun, SLURM, Lightning's DDP
# subprocesses, a Lightning multi-node launch).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")


def launched_as_global_zero() -> bool:
    """Before the Trainer exists: is this the process that becomes global rank zero?"""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def is_global_zero() -> bool:
    """Lightning's answer once it is loaded (its strategy sets it once the processes start), else the launcher's."""
    rank_zero = sys.modules.get("lightning_fabric.utilities.rank_zero")
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    return rank == 0 if rank is not None else launched_as_global_zero()


class _RankZeroConsole(logging.Handler):
    """INFO to stdout, WARNING and above to stderr, looked up per line (a redirected or captured stream gets it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_global_zero() and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """The logger of a module in this package; the package's console handler is installed on first use."""
    package = logging.getLogger(__name__.partition(".")[0])
    if not any(isinstance(handler, _RankZeroConsole) for handler in package.handlers):
        package.addHandler(_RankZeroConsole())
        package.setLevel(logging.INFO)
        package.propagate = False  # the lines are the stages' own: no root-logger prefix, no duplicates
    # A command runs as __main__ (python -m pipeline.stages.x): still under the package's logger.
    return package.getChild(name.removeprefix(package.name + "."))


def quiet_libraries() -> None:
    """Install the filters; call once at the start of a stage, before the libraries are imported."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level when imported
    for message, category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# Redraws of the bar per second at most (and once at the end of each loop): drawing it with its metrics on every
# step cost about 1 ms a step on 2 cores, a quarter of a small model's step.
PROGRESS_REFRESH_S = 0.25


def progress_bar() -> Any:
    """Lightning's bar with the epoch's train/val loss and accuracy, without the logger's version (`v_num`), redrawn
    a few times a second rather than on every step."""
    from pytorch_lightning.callbacks import TQDMProgressBar

    class EpochProgressBar(TQDMProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._drawn_at = 0.0

        def _due(self, batch_idx: int, bar: Any) -> bool:
            now = time.monotonic()
            if batch_idx + 1 == bar.total or now - self._drawn_at >= PROGRESS_REFRESH_S:
                self._drawn_at = now
                return True
            return False

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self._due(batch_idx, self.train_progress_bar):
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        def on_validation_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
        ) -> None:
            if self._due(batch_idx, self.val_progress_bar):
                super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return EpochProgressBar()
