"""Images: the built-in digits, an `.npz` with `x` and `y` arrays, or a folder with one sub-folder per class.

Every image ends up float32 (channels, height, width) in the colour mode (`data.image.color`) and size
(`data.image.size`) from params; the preprocessor standardises each channel with training-split statistics.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataParams, ImageParams
from pipeline.data import DataError, RawData, require_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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
    return RawData(fit_images(x, params.image, str(path)), y)


def read_new(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Images to predict: one image file, a folder of them (searched recursively) or an `.npz` with `x`."""
    params = ImageParams(**meta["preprocessing"]["params"])
    path = require_file(path)
    if path.suffix.lower() == ".npz":
        x, _ = _load_npz(path, need_labels=False)
        return new_array_images(x, meta, str(path)), [f"{path.name}[{i}]" for i in range(len(x))]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found.")
    size = meta["input_shape"][1:]  # what the model takes: new images are resized to it
    return np.stack([_read_image(f, params.color, size, resize=True) for f in files]), [str(f) for f in files]


def new_array_images(x: np.ndarray, meta: dict[str, Any], source: str) -> np.ndarray:
    """Images to predict, given as an array: brought to the training colour mode and size."""
    params = ImageParams(**meta["preprocessing"]["params"])
    return fit_images(np.asarray(x, dtype=np.float32), params, source, expect_channels=meta["input_shape"][0])


def fit_images(x: np.ndarray, params: ImageParams, source: str, expect_channels: int | None = None) -> np.ndarray:
    """Array images as (n, channels, height, width) float32 in the requested colour mode and size."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # channels-last as most image tools write it
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise DataError(f"{source}: images must be (n, height, width), (n, height, width, channels) or "
                        f"(n, channels, height, width) with 1, 3 or 4 channels; got shape {x.shape}.")
    if expect_channels is not None and x.shape[1] != expect_channels and params.color == "rgb":
        raise DataError(f"{source}: images have {x.shape[1]} channel(s), the model was trained on "
                        f"{expect_channels}.")
    x = x[:, :3].astype(np.float32)
    if params.color == "grayscale" and x.shape[1] == 3:
        x = (x * np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]).sum(1, keepdims=True)
    elif params.color == "rgb" and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if params.size and list(x.shape[2:]) != list(params.size):
        import torch

        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=tuple(params.size), mode="bilinear",
                                            antialias=True).numpy()
    return np.ascontiguousarray(x)


def _load_npz(path: Path, need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in (("x", "y") if need_labels else ("x",)) if k not in arrays]
            if missing:
                raise DataError(f"{path}: no array named {', '.join(missing)} (found {', '.join(arrays.files)}); "
                                "save images as `x` and labels as `y`.")
            return arrays["x"], arrays["y"] if "y" in arrays else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # numpy takes any non-archive for a pickle and suggests allow_pickle=True: not advice to pass on.
        reason = "not an .npz archive" if "pickle" in str(exc) else str(exc)
        raise DataError(f"{path}: not a readable .npz file ({reason}). Write it with numpy.savez(path, x=images, "
                        "y=labels).") from None


def _load_folder(root: Path, params: ImageParams) -> RawData:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in a folder named after it.")
    files = [(f, c) for c in classes for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: the class folders hold no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    size = params.size or _read_image(files[0][0], params.color).shape[1:]  # no size given: all must share one
    images = np.stack([_read_image(f, params.color, size, resize=bool(params.size)) for f, _ in files])
    return RawData(images, np.array([classes.index(c) for _, c in files]), classes)


def _read_image(path: Path, color: str, size: Any = None, resize: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if color == "grayscale" else "RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                if not resize:
                    raise DataError(f"{path}: {img.height}x{img.width} pixels, unlike the first image "
                                    f"({size[0]}x{size[1]}); set data.image.size to resize them all.")
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}). Remove or replace the file.") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class ChannelStandardiser:
    """Per-channel mean and std of the training images; applied to every split and to new images."""

    def __init__(self, params: ImageParams, mean: list[float] | None = None, std: list[float] | None = None):
        self.params, self.mean, self.std = params, mean, std
        self.shape: list[int] | None = None

    def fit(self, x: np.ndarray) -> "ChannelStandardiser":
        self.mean = x.mean(axis=(0, 2, 3)).tolist()
        self.std = [s if s > 0 else 1.0 for s in x.std(axis=(0, 2, 3)).tolist()]
        self.shape = list(x.shape[1:])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        mean = np.array(self.mean, np.float32)[None, :, None, None]
        std = np.array(self.std, np.float32)[None, :, None, None]
        return ((x - mean) / std).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"input_shape": self.shape, "normalisation": {"mean": self.mean, "std": self.std},
                "preprocessing": {"params": {"size": self.params.size, "color": self.params.color}}}

    def save(self, folder: Path) -> None:
        """Everything lives in meta.json (`describe`)."""


def new_preprocessor(params: DataParams) -> ChannelStandardiser:
    return ChannelStandardiser(params.image)


def load_preprocessor(prepared_dir: Path, meta: dict[str, Any]) -> ChannelStandardiser:
    norm = meta["normalisation"]
    standardiser = ChannelStandardiser(ImageParams(**meta["preprocessing"]["params"]), norm["mean"], norm["std"])
    standardiser.shape = meta["input_shape"]
    return standardiser
