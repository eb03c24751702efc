"""LightningDataModule over the prepare stage's in-memory arrays.

Batches are gathered with one tensor index per batch (`__getitems__`) instead of collating sample by sample: on
small models the per-sample path of `DataLoader(TensorDataset)` costs about two thirds of the throughput (see
bench/train_throughput.py). Sampling stays with DataLoader, so Lightning still swaps in a DistributedSampler
under DDP and `seed_everything` still governs the shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.artifacts import split_file


class InMemoryDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


def already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for InMemoryDataset: `__getitems__` has already built the batch."""
    return batch


def load_split(prepared_dir: str | Path, split: str) -> InMemoryDataset:
    from pipeline.data import model_input

    with np.load(Path(prepared_dir) / split_file(split)) as arrays:
        return InMemoryDataset(torch.from_numpy(model_input(arrays["x"])), torch.from_numpy(arrays["y"]))


def batches(dataset: InMemoryDataset, batch_size: int, shuffle: bool = False) -> DataLoader:
    # torch types collate_fn's input as a list of samples; with `__getitems__` it gets what that returns
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=already_batched)  # type: ignore[arg-type]


class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, prepared_dir: str | Path, batch_size: int):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size = batch_size
        self.splits: dict[str, InMemoryDataset] = {}

    @classmethod
    def of_splits(cls, train: InMemoryDataset, val: InMemoryDataset, batch_size: int) -> PreparedDataModule:
        """Splits already in memory (cross-validation folds)."""
        data = cls("", batch_size)
        data.splits = {"train": train, "val": val}
        return data

    def setup(self, stage: str) -> None:
        for split in ("train", "val"):
            if split not in self.splits:
                self.splits[split] = load_split(self.prepared_dir, split)

    def train_dataloader(self) -> DataLoader:
        return batches(self.splits["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return batches(self.splits["val"], self.batch_size)
