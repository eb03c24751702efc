"""The trained-model file: weights plus everything needed to rebuild the network, in tensors and plain types only,
so it loads with `torch.load(..., weights_only=True)` (no pickled code is ever executed on load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.registry import build_model

FORMAT_VERSION = 1


def save_trained_model(
    path: Path, net: nn.Module, model_name: str, hparams: dict[str, Any], meta: dict[str, Any]
) -> None:
    from pipeline.files import atomic_path

    bundle = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "hparams": hparams,
        "kind": meta["kind"],
        "input_shape": list(meta["input_shape"]),
        "vocab_size": meta.get("vocab_size"),
        "categorical_cardinalities": meta.get("categorical_cardinalities"),  # tables with embedding indices
        "num_classes": int(meta["num_classes"]),
        "class_names": list(meta["class_names"]),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def load_trained_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    net = build_model(
        bundle["model_name"],
        bundle["hparams"],
        bundle["input_shape"],
        bundle["num_classes"],
        bundle["vocab_size"],
        bundle.get("categorical_cardinalities"),
    )  # absent in older files
    net.load_state_dict(bundle["state_dict"])
    net.eval()
    return net, bundle


def predict_proba(net: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class probabilities, batch by batch, in inference mode."""
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(x[i : i + batch_size]).softmax(dim=1) for i in range(0, len(x), batch_size)])
