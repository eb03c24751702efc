"""Network architectures as plain `nn.Module`s, and the registry from `model.name` in params.yaml to a class.

Every class takes `input_shape`, `num_classes` and `vocab_size` (read from the prepare stage's metadata, never from
the user) followed by its own hyper-parameters as keyword arguments, which are exactly the fields of its section
under `model:` in params.yaml. The arguments tell the three kinds of input apart:

- tabular: `vocab_size` None, `input_shape` (features,); float rows.
- image: `vocab_size` None, `input_shape` (channels, height, width); float images.
- text: `vocab_size` the vocabulary's size, `input_shape` (max_len,); int64 token ids, padded at the end with
  `PAD_ID`. Fields such as `embedding_dim` apply to text only.

Every network returns logits of shape (batch, num_classes). A network that cannot read a kind of input raises
ValueError when built, naming one that can.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.cnn import CNN
from models.mlp import MLP, PAD_ID
from models.rnn import RNN
from models.transformer import Transformer

__all__ = ["PAD_ID", "REGISTRY", "build_model"]

REGISTRY: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": Transformer}


def build_model(name: str, hparams: dict[str, Any], input_shape: list[int], num_classes: int,
                vocab_size: int | None = None) -> nn.Module:
    return REGISTRY[name](input_shape=tuple(input_shape), num_classes=num_classes, vocab_size=vocab_size, **hparams)
