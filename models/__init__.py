"""Network architectures as plain `nn.Module`s, and the registry from `model.name` in params.yaml to a class.

Every class takes `input_shape`, `num_classes` and `vocab_size` (read from the prepare stage's metadata, never from
the user) followed by its own hyper-parameters as keyword arguments, which are exactly the fields of its section
under `model:` in params.yaml. The arguments tell the three kinds of input apart:

- tabular: `vocab_size` None, `input_shape` (features,); float rows. With `data.tabular.categorical_encoding:
  embedding` the metadata also gives `categorical_cardinalities` (the number of known categories of each
  categorical column): the last features of a row are then category indices, 0 for a missing or unknown category.
  Only the MLP reads those; `model.mlp.embedding_dim` caps the width of their embeddings.
- image: `vocab_size` None, `input_shape` (channels, height, width); float images.
- text: `vocab_size` the vocabulary's size, `input_shape` (max_len,); integer token ids (int32 or int64), padded
  at the end with `PAD_ID`. Fields such as `embedding_dim` apply to text (and the MLP's table embeddings) only.

Every network returns logits of shape (batch, num_classes). A network that cannot read a kind of input raises
ValueError when built, naming one that can.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from models.cnn import CNN
from models.mlp import MLP, PAD_ID, UNKNOWN_CATEGORY
from models.rnn import RNN
from models.transformer import Transformer

__all__ = ["PAD_ID", "REGISTRY", "UNKNOWN_CATEGORY", "build_model"]

REGISTRY: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": Transformer}


def build_model(name: str, hparams: dict[str, Any], input_shape: list[int], num_classes: int,
                vocab_size: int | None = None, categorical_cardinalities: list[int] | None = None) -> nn.Module:
    network = REGISTRY[name]
    data: dict[str, Any] = {"vocab_size": vocab_size}
    if categorical_cardinalities:
        if "categorical_cardinalities" not in inspect.signature(network).parameters:
            readers = [n for n, cls in REGISTRY.items()
                       if "categorical_cardinalities" in inspect.signature(cls).parameters]
            raise ValueError(f"model.name '{name}' cannot read categorical embedding indices; use model.name: "
                             f"{' or '.join(readers)}, or data.tabular.categorical_encoding: onehot.")
        data["categorical_cardinalities"] = [int(k) for k in categorical_cardinalities]
    return network(input_shape=tuple(input_shape), num_classes=num_classes, **data, **hparams)
