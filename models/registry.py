"""The registry from `model.name` in params.yaml to a network class, and the one way to build a network."""

from __future__ import annotations

from typing import Any

from torch import nn

from models.cnn import CNN
from models.mlp import MLP
from models.rnn import RNN
from models.specs import embedding_indices_problem
from models.transformer import Transformer

REGISTRY: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": Transformer}


def build_model(
    name: str,
    hparams: dict[str, Any],
    input_shape: list[int],
    num_classes: int,
    vocab_size: int | None = None,
    categorical_cardinalities: list[int] | None = None,
) -> nn.Module:
    data: dict[str, Any] = {"vocab_size": vocab_size}
    if categorical_cardinalities:
        problem = embedding_indices_problem(name)
        if problem:
            raise ValueError(problem)
        data["categorical_cardinalities"] = [int(k) for k in categorical_cardinalities]
    return REGISTRY[name](input_shape=tuple(input_shape), num_classes=num_classes, **data, **hparams)
