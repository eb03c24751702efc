"""Training loop: the project's path vs a bare Lightning Trainer vs a hand-written loop, same data and model.

    python bench/training_loop.py                                       # MLP [256, 256], batch 256 ... 2048
    python bench/training_loop.py --hidden-dims 1024 1024 --batch-sizes 256 512

For each batch size, on the same in-memory data and the same `models/` MLP with the same AdamW:
(a) a hand-written loop: randperm, tensor slicing, forward, backward, step;
(b) a bare Lightning Trainer: a minimal LightningModule (loss and optimizer only) fed by the project's data path,
    no logger, no metrics, no progress bar, no checkpointing, no model summary;
(c) `pipeline.stages.train.fit` exactly as the train stage runs it: PreparedDataModule, Classifier with its epoch
    metrics, checkpointing, the progress bar, MLflow logging (and system metrics) into a SQLite store in a temporary
    folder.
Samples/s count the training epochs only (start-up and validation excluded), in wall-clock seconds or, with
`--clock cpu`, in CPU seconds of the process (all its threads: MLflow's system-metrics sampler counts against (c)).
The three run interleaved (a, b, c, a, b, c, ...) and each figure is the median of the repeats: the machine is
shared and noisy. Prints the step time of (a) and the ratios (c)/(b) and (c)/(a), each the median over the rounds
of the ratio within a round.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_throughput import NUM_CLASSES, EpochTimer, bench_params, hand_written_loop, make_data, project_path
from models.registry import build_model
from pipeline.config import Params
from pipeline.training.datamodule import InMemoryDataset, batches
from pipeline.training.threads import configure_threads


class BareModule(pl.LightningModule):
    """The network, its loss and its optimizer: nothing Lightning does not need."""

    def __init__(self, net: torch.nn.Module, params: Params):
        super().__init__()
        self.net, self.params = net, params

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        t = self.params.train
        return torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def bare_lightning(x: torch.Tensor, y: torch.Tensor, params: Params, tmp: Path, clock: Callable[[], float]) -> float:
    torch.manual_seed(0)
    net = build_model("mlp", dataclasses.asdict(params.model.mlp), [x.shape[1]], NUM_CLASSES)
    timer = EpochTimer(clock)
    trainer = pl.Trainer(
        max_epochs=params.train.max_epochs,
        accelerator="cpu",
        deterministic=params.trainer.deterministic,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
    )
    trainer.fit(BareModule(net, params), batches(InMemoryDataset(x, y), params.train.batch_size, shuffle=True))
    return timer.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[256, 256], help="the MLP's hidden layers")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of (a), (b), (c); medians")
    parser.add_argument("--threads", default=Params().trainer.num_threads, help="torch threads (trainer.num_threads)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed seconds; cpu: the process's CPU seconds (steadier beside busy neighbours; --threads 1)",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    threads = configure_threads(args.threads if args.threads == "auto" else int(args.threads))
    x, y = make_data(args.rows, args.features)
    n_val = args.rows // 20  # project_path keeps the first 5 % as its val split: (a) and (b) train on the rest
    x_train, y_train = torch.from_numpy(x[n_val:]), torch.from_numpy(y[n_val:])
    os.environ.pop("DVC_ROOT", None)
    rows = []
    for batch_size in args.batch_sizes:
        args.batch_size = batch_size
        hand, bare, ours = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                params = bench_params(args, Path(tmp))
                hand.append(hand_written_loop(x_train, y_train, params, clock=clock))
                bare.append(bare_lightning(x_train, y_train, params, Path(tmp), clock))
                ours.append(project_path(x, y, params, Path(tmp), clock))
        # A ratio pairs the runs of one round, seconds apart, so that a neighbour's burst of load mostly hits both
        by_bare = statistics.median(c / b for c, b in zip(ours, bare, strict=True))
        by_hand = statistics.median(c / a for c, a in zip(ours, hand, strict=True))
        rows.append((batch_size, *map(statistics.median, (hand, bare, ours)), by_bare, by_hand))

    print(
        f"\ntraining loop (samples per {args.clock}-clock second, median of {args.repeats}), {args.rows} rows x "
        f"{args.features} features, MLP {args.hidden_dims}, {args.epochs} epochs, torch threads {threads}"
    )
    print("  batch | (a) step ms | (a) hand loop | (b) bare Lightning | (c) project path | (c)/(b) | (c)/(a)")
    for batch_size, hand, bare, ours, by_bare, by_hand in rows:
        print(
            f"  {batch_size:>5} | {1000 * batch_size / hand:>11.2f} | {hand:>13,.0f} | {bare:>18,.0f} "
            f"| {ours:>16,.0f} | {by_bare:>7.2f} | {by_hand:>7.2f}"
        )


if __name__ == "__main__":
    main()
