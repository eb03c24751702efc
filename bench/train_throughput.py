"""Training throughput: the project's training path vs a hand-written PyTorch loop, same model, same data.

    python bench/train_throughput.py [--rows 200000] [--features 64] [--epochs 3] [--batch-size 512]

    python bench/train_throughput.py --batch-sizes 256 512 1024 2048

For each batch size:
(a) a hand-written loop: shuffle with randperm, slice tensors, forward, backward, step;
(d) the same hand-written loop fed by the project's data path (`pipeline.training.datamodule.batches`): the data
    path alone;
(b) `pipeline.stages.train.fit`, exactly as the train stage runs it: PreparedDataModule, Classifier (with its epoch
    metrics), checkpointing, early stopping, Lightning's progress bar, and MLflow logging into a SQLite store in a
    temporary folder;
(c) for reference, (b)'s LightningModule fed by the naive `DataLoader(TensorDataset)`, collating sample by sample.
Throughput counts training samples per second over the training epochs only (validation and start-up excluded),
timed by a callback in (b) and (c). Prints samples/s and each ratio to (a).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.registry import build_model
from pipeline.artifacts import split_file
from pipeline.config import Params
from pipeline.stages.train import fit
from pipeline.training.datamodule import InMemoryDataset, batches
from pipeline.training.module import Classifier

NUM_CLASSES = 10


class EpochTimer(pl.Callback):
    """Seconds spent in each training epoch, minus the validation loop Lightning runs inside it (wall-clock seconds,
    or CPU seconds of the process with `clock=time.process_time`)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.epoch_seconds: list[float] = []
        self.samples, self._start, self._elapsed = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._elapsed = self.clock(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._elapsed += self.clock() - self._start

    def on_validation_end(self, trainer, pl_module) -> None:
        self._start = self.clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(self._elapsed + self.clock() - self._start)
        self.samples += len(trainer.train_dataloader.dataset)

    @property
    def throughput(self) -> float:
        return self.samples / sum(self.epoch_seconds)


def make_data(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features labelled by a random linear teacher: learnable, no download."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = (x @ rng.standard_normal((features, NUM_CLASSES), dtype=np.float32)).argmax(axis=1).astype(np.int64)
    return x, y


def bench_params(args: argparse.Namespace, tmp: Path) -> Params:
    params = Params()
    params.model.name = "mlp"
    params.model.mlp.hidden_dims = args.hidden_dims
    params.train.batch_size, params.train.max_epochs = args.batch_size, args.epochs
    params.train.early_stopping_patience = None
    params.trainer.progress_bar = True
    params.trainer.deterministic = False
    params.mlflow.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    params.mlflow.experiment_name = "bench"
    return params


def sliced_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    perm = torch.randperm(len(y))
    for i in range(0, len(y), batch_size):
        idx = perm[i : i + batch_size]
        yield x[idx], y[idx]


def hand_written_loop(
    x: torch.Tensor,
    y: torch.Tensor,
    params: Params,
    project_data_path: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    torch.manual_seed(0)
    net = build_model("mlp", dataclasses.asdict(params.model.mlp), [x.shape[1]], NUM_CLASSES)
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay)
    loss_fn, bs = torch.nn.CrossEntropyLoss(), params.train.batch_size
    dataset = InMemoryDataset(x, y)
    net.train()
    start = clock()
    for _ in range(params.train.max_epochs):
        for xb, yb in batches(dataset, bs, shuffle=True) if project_data_path else sliced_batches(x, y, bs):
            loss = loss_fn(net(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return params.train.max_epochs * len(y) / (clock() - start)


def write_prepared(folder: Path, x: np.ndarray, y: np.ndarray, kind: str) -> None:
    """A prepare-stage output folder (train/val arrays + meta.json); the first 5 % of the rows are the val split."""
    n_val = len(y) // 20
    folder.mkdir(parents=True)
    for split, rows in (("train", np.arange(n_val, len(y))), ("val", np.arange(n_val))):
        for array, values in (("x", x[rows]), ("y", y[rows]), ("index", rows)):
            np.save(folder / split_file(split, array), values)
    meta = {
        "dataset": "synthetic",
        "kind": kind,
        "class_names": [str(i) for i in range(NUM_CLASSES)],
        "num_classes": NUM_CLASSES,
        "input_shape": list(x.shape[1:]),
        "normalisation": {"mean": [0.0], "std": [1.0]},
        "split_sizes": {"train": len(y) - n_val, "val": n_val},
        "digest": "bench",
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def project_path(
    x: np.ndarray, y: np.ndarray, params: Params, tmp: Path, clock: Callable[[], float] = time.perf_counter
) -> float:
    prepared = tmp / "prepared"
    write_prepared(prepared, x, y, "tabular")
    timer = EpochTimer(clock)
    fit(params, prepared, tmp / "model", tmp / "checkpoints", extra_callbacks=[timer])
    return timer.throughput


def naive_lightning(x: torch.Tensor, y: torch.Tensor, params: Params, tmp: Path) -> float:
    net = build_model("mlp", dataclasses.asdict(params.model.mlp), [x.shape[1]], NUM_CLASSES)
    module = Classifier(net, NUM_CLASSES, params.train)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=params.train.max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        default_root_dir=tmp,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=params.train.batch_size, shuffle=True))
    return timer.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[256, 256], help="the MLP's hidden layers")
    parser.add_argument("--skip-naive", action="store_true", help="skip (c), the slow naive DataLoader path")
    args = parser.parse_args()

    x, y = make_data(args.rows, args.features)
    n_train = args.rows - args.rows // 20
    x_train, y_train = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    os.environ.pop("DVC_ROOT", None)
    rows = []
    for batch_size in args.batch_sizes:
        args.batch_size = batch_size
        with tempfile.TemporaryDirectory() as tmp:
            params = bench_params(args, Path(tmp))
            hand = hand_written_loop(x_train, y_train, params)
            data_path = hand_written_loop(x_train, y_train, params, project_data_path=True)
            ours = project_path(x, y, params, Path(tmp))
            naive = None if args.skip_naive else naive_lightning(x_train, y_train, params, Path(tmp))
        rows.append((batch_size, hand, data_path, ours, naive))

    print(
        f"\ntraining throughput (samples/s), {args.rows} rows x {args.features} features, MLP {args.hidden_dims}, "
        f"{args.epochs} epochs, torch threads {torch.get_num_threads()}"
    )
    print(
        "  batch | (a) hand loop | (d) hand loop, project data path | (b) project path, MLflow on "
        "| (c) DataLoader(TensorDataset)"
    )
    for batch_size, hand, data_path, ours, naive in rows:
        naive_cell = "skipped" if naive is None else f"{naive:>9,.0f} ({naive / hand:.2f}x)"
        print(
            f"  {batch_size:>5} | {hand:>13,.0f} | {data_path:>22,.0f} ({data_path / hand:.2f}x) "
            f"| {ours:>17,.0f} ({ours / hand:.2f}x) | {naive_cell}"
        )


if __name__ == "__main__":
    main()
