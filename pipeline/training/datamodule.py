"""LightningDataModule over the prepare stage's splits, read from memory maps a batch at a time.

Each split's arrays are `.npy` files opened with `np.load(mmap_mode="r")`: training holds the rows of the batch
being built, not the split, so a data set larger than memory trains in memory bounded by the batch and the model.
Image folders are decoded lazily instead (pipeline/data/image.py, `ImageFiles`), in DataLoader workers.

Batches are gathered with one index per batch (`__getitems__`) instead of collating sample by sample: on small
models the per-sample path of `DataLoader(TensorDataset)` costs about two thirds of the throughput (see
bench/train_throughput.py). A batch's indices are sorted before the gather, so that its rows are read in file order.
Sampling stays with DataLoader, so Lightning still swaps in a DistributedSampler under DDP and `seed_everything`
still governs the shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pipeline.artifacts import open_split, read_meta

SAMPLER_CHUNK = 65536  # shuffled indices turned into Python ints at a time


class InMemoryDataset(Dataset):
    """Tensors already in memory (tests, benches)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


class MappedSplit(Dataset):
    """A prepared split whose arrays stay on disk: a batch's rows are gathered from the memory maps, and become
    tensors only then. Sent to a DataLoader worker process, it sends where its files are, not their contents."""

    def __init__(self, prepared_dir: str | Path, split: str):
        self.prepared_dir, self.split = Path(prepared_dir), split
        self._open()

    def _open(self) -> None:
        self.x = open_split(self.prepared_dir, self.split, "x")
        self.y = open_split(self.prepared_dir, self.split, "y")

    def __getstate__(self) -> dict[str, Any]:
        return {"prepared_dir": self.prepared_dir, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from pipeline.data import model_input

        idx = np.sort(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(model_input(self.x[idx])), torch.from_numpy(np.asarray(self.y[idx]))


class JoinedRows(Dataset):
    """Rows `rows` of datasets placed end to end: the cross-validation folds over train + val."""

    def __init__(self, parts: Sequence[Any], rows: np.ndarray):
        self.parts, self.rows = list(parts), np.asarray(rows)
        self.starts = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        wanted = np.sort(self.rows[np.asarray(indices, dtype=np.int64)])
        pieces = [
            part.__getitems__(wanted[(wanted >= lo) & (wanted < hi)] - lo)
            for part, lo, hi in zip(self.parts, self.starts[:-1], self.starts[1:], strict=True)
        ]
        return torch.cat([x for x, _ in pieces]), torch.cat([y for _, y in pieces])


class CompactRandomSampler(RandomSampler):
    """RandomSampler with its shuffled order kept as one int32 array rather than a Python list of ints (about 36
    bytes a row): shuffling 11 million training rows holds 45 MB, not 400 MB. A RandomSampler still, so Lightning
    sees a shuffled loader (DDP's DistributedSampler shuffles too), and seeded by torch's global generator unless
    given one, so `seed_everything` still governs the order."""

    def __iter__(self):
        n = len(self.data_source)
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), dtype=torch.int32).numpy()
        for start in range(0, n, SAMPLER_CHUNK):
            yield from order[start : start + SAMPLER_CHUNK].tolist()


def already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for the datasets above: `__getitems__` has already built the batch."""
    return batch


def load_split(prepared_dir: str | Path, split: str) -> Any:
    """A prepared split as a dataset: memory-mapped arrays, or image files decoded when a batch is taken (a torch
    Dataset by its methods: pipeline.data.image imports no torch at module level)."""
    prepared_dir = Path(prepared_dir)
    if read_meta(prepared_dir).get("storage") == "image_files":
        from pipeline.data.image import ImageFiles

        return ImageFiles.of_split(prepared_dir, split)
    return MappedSplit(prepared_dir, split)


def split_labels(prepared_dir: str | Path, split: str) -> np.ndarray:
    """The labels of a split (class weights, stratified folds), as a memory map: read only where they are used."""
    return open_split(Path(prepared_dir), split, "y")


def batches(
    dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    # torch types collate_fn's input as a list of samples; with `__getitems__` it gets what that returns
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=CompactRandomSampler(dataset) if shuffle else None,  # type: ignore[arg-type]
        collate_fn=already_batched,  # type: ignore[arg-type]
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # not restarted (and the dataset re-sent) every epoch
        pin_memory=pin_memory,
    )


class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, prepared_dir: str | Path, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.splits: dict[str, Dataset] = {}

    @classmethod
    def of_splits(
        cls, train: Dataset, val: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False
    ) -> PreparedDataModule:
        """Splits given as datasets (cross-validation folds)."""
        data = cls("", batch_size, num_workers, pin_memory)
        data.splits = {"train": train, "val": val}
        return data

    def setup(self, stage: str) -> None:
        for split in ("train", "val"):
            if split not in self.splits:
                self.splits[split] = load_split(self.prepared_dir, split)

    def train_dataloader(self) -> DataLoader:
        return batches(self.splits["train"], self.batch_size, True, self.num_workers, self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return batches(self.splits["val"], self.batch_size, False, self.num_workers, self.pin_memory)
