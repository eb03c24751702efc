"""Overhead of resuming an interrupted training: time from the restart to its first new training step.

    python bench/resume_overhead.py [--epochs 6] [--interrupt-at 3] [--repeats 3]

On the digits (prepared once into a temporary folder, MLflow in a SQLite store there), for two networks (the
params.yaml CNN, and a 4.3 M-parameter MLP whose checkpoint with Adam state is ~50 MB):
- fresh: `pipeline.stages.train.fit` from an empty checkpoint folder; seconds from the call to the first training step;
- resumed: the same training interrupted at the start of epoch `--interrupt-at` (a KeyboardInterrupt, which is
  what Ctrl+C raises: Lightning's shutdown runs, the run ends KILLED), then `fit` again on the same folder; seconds
  from that call to its first training step. This includes what a resume adds: reading `resume.json`, loading
  `last.ckpt` (weights, optimizer, loops, random state), ending the interrupted run and copying its metric
  history into the new run.
Both are timed inside one process after the imports (which a restart pays equally in both cases). The overhead is
resumed − fresh; the median of `--repeats` is printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import DataParams, load_params
from pipeline.stages.prepare import prepare
from pipeline.stages.train import fit

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "cnn (params.yaml)": ["model.name=cnn"],
    "mlp 2048x2048": ["model.name=mlp", "model.mlp.hidden_dims=[2048,2048]"],
}


class FirstStep(pl.Callback):
    def __init__(self) -> None:
        self.at: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.at is None:
            self.at = time.perf_counter()


class InterruptAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def seconds_to_first_step(params, root: Path, checkpoints: Path, interrupt_at: int | None = None) -> float:
    first = FirstStep()
    callbacks = [first] + ([InterruptAtEpoch(interrupt_at)] if interrupt_at is not None else [])
    start = time.perf_counter()
    try:
        fit(params, root / "prepared", root / "model", checkpoints, extra_callbacks=callbacks)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl+C after one
    return first.at - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--interrupt-at", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        prepare(DataParams(), root / "prepared")
        print(
            f"digits, {args.epochs} epochs, interrupted at the start of epoch {args.interrupt_at}; "
            f"median of {args.repeats}; load {os.getloadavg()[0]:.2f}\n"
        )
        print("| network | fresh: to first step | resumed: to first step | resume overhead |")
        print("| --- | ---: | ---: | ---: |")
        for name, overrides in NETWORKS.items():
            params = load_params(
                ROOT / "params.yaml",
                overrides=[
                    *overrides,
                    f"train.max_epochs={args.epochs}",
                    "train.early_stopping_patience=null",
                    "trainer.progress_bar=false",
                    f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
                ],
            )
            fresh, resumed = [], []
            for _ in range(args.repeats):
                folder = root / f"ckpt-{len(fresh)}-{name.split()[0]}"
                fresh.append(seconds_to_first_step(params, root, folder, interrupt_at=args.interrupt_at))
                resumed.append(seconds_to_first_step(params, root, folder))
            f, r = statistics.median(fresh), statistics.median(resumed)
            print(f"| {name} | {f:.3f} s | {r:.3f} s | {r - f:+.3f} s |")


if __name__ == "__main__":
    main()
