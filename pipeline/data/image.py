"""Images: the built-in digits, an `.npz` with `x` and `y` arrays, or a folder with one sub-folder per class.

An image folder is not held as one array: prepare reads each file once, to check it and to add its pixels to the
channel statistics, and records the file list (`image_files.json`); training decodes the files a batch at a time as
DataLoader workers take them (`ImageFiles`), resized and standardised exactly as prepare would have done. Arrays
(digits, `.npz`) are small by nature and are prepared into memory-mapped arrays like tables.

Every image ends up float32 (channels, height, width) in the colour mode (`data.image.color`) and size
(`data.image.size`) from params; the preprocessor standardises each channel with training-split statistics.
Image files are read on the 0-255 scale (16-bit ones scaled down to it). meta.json records the value range the model
was trained on (`pixel_range`: 0-255 for image files, the training split's minimum and maximum for arrays, 0-16 for
the built-in digits): image files to predict are scaled to it, and arrays far outside it are refused.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from pipeline import console
from pipeline.artifacts import IMAGE_LIST_FILE, open_split, read_meta
from pipeline.config import DataParams, ImageParams
from pipeline.data import DataError, RawData, require_file
from pipeline.files import read_json, write_json

log = console.get_logger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FILE_RANGE = (0.0, 255.0)  # the scale image files are read on
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}  # Pillow's modes of 16-bit greyscale files
SIXTEEN_TO_EIGHT_BIT = 65535 / 255
# Arrays to predict may stray this share of the training range beyond it; further out, they are on another scale.
RANGE_TOLERANCE = 0.5


def load_raw(params: DataParams) -> RawData:
    if params.dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()  # 1,797 8x8 images shipped inside scikit-learn: no download
        x = bunch.images.astype(np.float32)[:, None]
        return RawData(fit_images(x, params.image, "digits"), bunch.target, [str(c) for c in bunch.target_names])
    path = require_file(params.dataset)
    if path.is_dir():
        return _load_folder(path, params.image)
    x, y = _load_npz(path)
    return RawData(fit_images(checked_pixels(x, str(path)), params.image, str(path)), y)


def read_new(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Images to predict: one image file, a folder of them (searched recursively) or an `.npz` with `x`."""
    batches = list(read_new_batches(path, meta, rows=2**62))
    return np.concatenate([x for x, _ in batches]), [i for _, ids in batches for i in ids]


def read_new_batches(path: Path, meta: dict[str, Any], rows: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """`read_new`'s images, `rows` at a time (an `.npz` is read whole, image files one batch at a time)."""
    params = ImageParams(**meta["preprocessing"]["params"])
    path = require_file(path)
    if path.suffix.lower() == ".npz":
        x, _ = _load_npz(path, need_labels=False)
        x = new_array_images(x, meta, str(path))
        for start in range(0, len(x), rows):
            yield x[start : start + rows], [f"{path.name}[{i}]" for i in range(start, min(start + rows, len(x)))]
        return
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found.")
    size = meta["input_shape"][1:]  # what the model takes: new images are resized to it
    lo, hi = meta.get("pixel_range", FILE_RANGE)  # absent in folders prepared before it was recorded
    notes: dict[str, list[Path]] = {}
    for start in range(0, len(files), rows):
        batch = files[start : start + rows]
        x = np.stack([_read_image(f, params.color, size, resize=True, notes=notes) for f in batch])
        yield x * np.float32((hi - lo) / FILE_RANGE[1]) + np.float32(lo), [str(f) for f in batch]
    for note, noted in notes.items():
        log.warning(
            f"predict: warning: {len(noted)} image(s) {note}, e.g. {noted[0]}; predictions on them are unreliable."
        )


def new_array_images(x: np.ndarray, meta: dict[str, Any], source: str) -> np.ndarray:
    """Images to predict, given as an array: checked, and brought to the training colour mode and size."""
    params = ImageParams(**meta["preprocessing"]["params"])
    x = checked_pixels(np.asarray(x), source)
    if "pixel_range" in meta:
        lo, hi = meta["pixel_range"]
        slack = RANGE_TOLERANCE * (hi - lo)
        if x.min() < lo - slack or x.max() > hi + slack:
            raise DataError(
                f"{source}: pixel values span [{x.min():g}, {x.max():g}], but the model was trained on "
                f"values in [{lo:g}, {hi:g}] (pixel_range in meta.json). Scale the images to that range."
            )
    return fit_images(x, params, source, expect_channels=meta["input_shape"][0])


def checked_pixels(x: np.ndarray, source: str) -> np.ndarray:
    """`x` as float32, refused with a message when it holds no images, no numbers, or NaN or infinite values."""
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{source}: the images are {x.dtype} values, not numbers. Save pixel values (e.g. "
            "numpy.savez(path, x=images.astype('float32')))."
        )
    if x.size == 0 or x.ndim < 2:
        raise DataError(f"{source}: no images in it (array of shape {x.shape}). Save at least one image.")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise DataError(
            f"{source}: {int(bad.sum())} image(s) hold NaN or infinite pixel values (first at index "
            f"{first}); nothing can be learnt or predicted from them. Fix or remove them."
        )
    return x


def fit_images(x: np.ndarray, params: ImageParams, source: str, expect_channels: int | None = None) -> np.ndarray:
    """Array images as (n, channels, height, width) float32 in the requested colour mode and size."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # channels-last as most image tools write it
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise DataError(
            f"{source}: images must be (n, height, width), (n, height, width, channels) or "
            f"(n, channels, height, width) with 1, 3 or 4 channels; got shape {x.shape}."
        )
    if expect_channels is not None and x.shape[1] != expect_channels and params.color == "rgb":
        raise DataError(f"{source}: images have {x.shape[1]} channel(s), the model was trained on {expect_channels}.")
    x = x[:, :3].astype(np.float32)
    if params.color == "grayscale" and x.shape[1] == 3:
        x = (x * np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]).sum(1, keepdims=True)
    elif params.color == "rgb" and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if params.size and list(x.shape[2:]) != list(params.size):
        import torch

        x = torch.nn.functional.interpolate(
            torch.from_numpy(x), size=tuple(params.size), mode="bilinear", antialias=True
        ).numpy()
    return np.ascontiguousarray(x)


@overload
def _load_npz(path: Path, need_labels: Literal[True] = ...) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def _load_npz(path: Path, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None]: ...


def _load_npz(path: Path, need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in (("x", "y") if need_labels else ("x",)) if k not in arrays]
            if missing:
                raise DataError(
                    f"{path}: no array named {', '.join(missing)} (found {', '.join(arrays.files)}); "
                    "save images as `x` and labels as `y`."
                )
            return arrays["x"], arrays["y"] if "y" in arrays else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # numpy takes any non-archive for a pickle and suggests allow_pickle=True: not advice to pass on.
        reason = "not an .npz archive" if "pickle" in str(exc) else str(exc)
        raise DataError(
            f"{path}: not a readable .npz file ({reason}). Write it with numpy.savez(path, x=images, y=labels)."
        ) from None


@dataclass
class ImageFileList:
    """An image folder's files (paths relative to `root`, class by class), each checked once when listed, with the
    per-channel sums of its pixels and of their squares: the training split's statistics need no second read."""

    root: Path
    files: list[str]
    color: str
    size: list[int]  # every image is brought to this (height, width)
    resize: bool  # data.image.size was given; else an image of another size is an error
    sums: np.ndarray  # (files, channels) float64
    squares: np.ndarray  # (files, channels) float64
    digest: str  # of the files' bytes, in order: prepare's digest changes when an image does

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: np.ndarray) -> ImageFileList:
        files = [self.files[i] for i in index]
        return ImageFileList(
            self.root, files, self.color, self.size, self.resize, self.sums[index], self.squares[index], self.digest
        )

    def decode(self) -> np.ndarray:
        """The images as float32 (n, channels, height, width) on the 0-255 scale."""
        return np.stack([_read_image(self.root / f, self.color, self.size, self.resize) for f in self.files])

    def tolist(self) -> list:  # the MLflow input example: the decoded pixels
        return self.decode().tolist()

    def save(self, folder: Path) -> None:
        write_json(
            folder / IMAGE_LIST_FILE,
            {"root": str(self.root), "size": self.size, "resize": self.resize, "files": self.files},
        )


def _load_folder(root: Path, params: ImageParams) -> RawData:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in a folder named after it.")
    files = [(f, c) for c in classes for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: the class folders hold no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    size = list(params.size or _read_image(files[0][0], params.color).shape[1:])  # no size: all must share one
    channels = 1 if params.color == "grayscale" else 3
    sums, squares = np.zeros((len(files), channels)), np.zeros((len(files), channels))
    digest = hashlib.sha256()
    for i, (f, _) in enumerate(files):  # one image in memory at a time
        digest.update(f.read_bytes())
        image = _read_image(f, params.color, size, resize=bool(params.size)).astype(np.float64)
        sums[i], squares[i] = image.sum(axis=(1, 2)), (image * image).sum(axis=(1, 2))
    listed = ImageFileList(
        root,
        [str(f.relative_to(root)) for f, _ in files],
        params.color,
        size,
        bool(params.size),
        sums,
        squares,
        digest.hexdigest(),
    )
    return RawData(listed, np.array([classes.index(c) for _, c in files]), classes)


class ImageFiles:
    """A prepared split of an image folder as a torch Dataset: a batch's files are decoded, resized and
    standardised when it is taken (in a DataLoader worker when there are workers), the rows in file order."""

    def __init__(self, listing: dict[str, Any], index: np.ndarray, y: np.ndarray, meta: dict[str, Any]):
        self.root, self.size, self.resize = Path(listing["root"]), listing["size"], listing["resize"]
        self.files = [listing["files"][i] for i in index]
        self.y = y
        self.color = meta["preprocessing"]["params"]["color"]
        self.standardiser = load_preprocessor(Path(), meta)

    @classmethod
    def of_split(cls, prepared_dir: Path, split: str, meta: dict[str, Any] | None = None) -> ImageFiles:
        meta = meta or read_meta(prepared_dir)
        index, y = (np.array(open_split(prepared_dir, split, a)) for a in ("index", "y"))
        return cls(read_json(prepared_dir / IMAGE_LIST_FILE), index, y, meta)

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The standardised images of rows `rows`, in that order."""
        decoded = [_read_image(self.root / self.files[i], self.color, self.size, self.resize) for i in rows]
        return self.standardiser.transform(np.stack(decoded))

    def __getitem__(self, i: int) -> Any:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        import torch

        rows = np.sort(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(self.inputs(rows)), torch.from_numpy(self.y[rows])


def _read_image(
    path: Path, color: str, size: Any = None, resize: bool = False, notes: dict[str, list[Path]] | None = None
) -> np.ndarray:
    """One image file as float32 (channels, height, width) on the 0-255 scale; `notes` collects what was odd."""
    from PIL import Image, UnidentifiedImageError

    notes = {} if notes is None else notes
    try:
        img: Image.Image  # converted or resized copies of the opened ImageFile
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:  # convert("L") would clip every value above 255 to white
                img = Image.fromarray(np.asarray(img, dtype=np.float32) / np.float32(SIXTEEN_TO_EIGHT_BIT), "F")
                if color == "rgb":
                    img = img.convert("RGB")
            else:
                if "A" in img.mode or "transparency" in img.info:
                    notes.setdefault("have transparent parts, read without them", []).append(path)
                img = img.convert("L" if color == "grayscale" else "RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                if not resize:
                    raise DataError(
                        f"{path}: {img.height}x{img.width} pixels, unlike the first image "
                        f"({size[0]}x{size[1]}); set data.image.size to resize them all."
                    )
                if img.height < size[0] or img.width < size[1]:
                    notes.setdefault(
                        f"are smaller than the model's {size[0]}x{size[1]} pixels and were enlarged", []
                    ).append(path)
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused, too large to read safely ({exc}). Shrink the image first.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}). Remove or replace the file.") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class ChannelStandardiser:
    """Per-channel mean and std of the training images; applied to every split and to new images."""

    def __init__(
        self,
        params: ImageParams,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pixel_range: list[float] | None = None,
    ):
        self.params, self.mean, self.std, self.pixel_range = params, mean, std, pixel_range
        self.shape: list[int] | None = None

    def fit(self, x: np.ndarray | ImageFileList) -> ChannelStandardiser:
        if isinstance(x, ImageFileList):  # from each file's sums: the mean and (population) std of x.decode()
            pixels = len(x) * x.size[0] * x.size[1]
            mean = x.sums.sum(axis=0) / pixels
            std = np.sqrt(np.maximum(x.squares.sum(axis=0) / pixels - mean * mean, 0))
            self.mean, self.std = mean.tolist(), [s if s > 0 else 1.0 for s in std.tolist()]
            self.shape = [x.sums.shape[1], *x.size]
            return self
        if self.pixel_range is None:  # arrays: the range they came in; image files' is known beforehand
            self.pixel_range = [float(x.min()), float(x.max())]
        self.mean = x.mean(axis=(0, 2, 3)).tolist()
        self.std = [s if s > 0 else 1.0 for s in x.std(axis=(0, 2, 3)).tolist()]
        self.shape = list(x.shape[1:])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        mean = np.array(self.mean, np.float32)[None, :, None, None]
        std = np.array(self.std, np.float32)[None, :, None, None]
        return ((x - mean) / std).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "input_shape": self.shape,
            "pixel_range": self.pixel_range,
            "normalisation": {"mean": self.mean, "std": self.std},
            "preprocessing": {"params": {"size": self.params.size, "color": self.params.color}},
        }

    def save(self, folder: Path) -> None:
        """Everything lives in meta.json (`describe`)."""


def new_preprocessor(params: DataParams) -> ChannelStandardiser:
    from_files = params.dataset != "digits" and Path(params.dataset).is_dir()
    return ChannelStandardiser(params.image, pixel_range=list(FILE_RANGE) if from_files else None)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> ChannelStandardiser:
    norm = meta["normalisation"]
    standardiser = ChannelStandardiser(ImageParams(**meta["preprocessing"]["params"]), norm["mean"], norm["std"])
    standardiser.shape = meta["input_shape"]
    return standardiser
