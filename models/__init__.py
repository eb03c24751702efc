"""Network architectures as plain `nn.Module`s, and the registry from `model.name` in params.yaml to a class.

Every class takes `input_shape` and `num_classes` (read from the prepare stage's metadata, never from the user)
followed by its own hyper-parameters, which are exactly the fields of its section under `model:` in params.yaml.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.cnn import CNN
from models.mlp import MLP

REGISTRY: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_model(name: str, hparams: dict[str, Any], input_shape: list[int], num_classes: int) -> nn.Module:
    return REGISTRY[name](input_shape=tuple(input_shape), num_classes=num_classes, **hparams)
