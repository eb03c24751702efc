from __future__ import annotations

import math

from torch import Tensor, nn

# Token id the prepare stage pads every text with, at the end; shared by every text model.
PAD_ID = 0


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of (batch, length, features) over the positions where `keep` (batch, length) is true.

    A row with nothing to keep (an empty text) gives zeros rather than 0 / 0.
    """
    keep = keep.unsqueeze(-1).to(values.dtype)
    return (values * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


class MLP(nn.Module):
    """Linear-ReLU-Dropout blocks, then a linear classifier.

    Tabular rows and images are flattened. Text (token ids, `vocab_size` given) is embedded and averaged over its
    non-PAD tokens first, a bag of words whose result does not depend on how much padding follows the text.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, *,
                 hidden_dims: list[int], dropout: float, embedding_dim: int | None = None):
        super().__init__()
        if vocab_size is None:
            self.embedding = None
            width = math.prod(input_shape)
        else:
            if embedding_dim is None:
                raise ValueError("MLP on text needs model.mlp.embedding_dim, the size of each token's embedding.")
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
            width = embedding_dim
        layers: list[nn.Module] = [nn.Flatten()]
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            x = masked_mean(self.embedding(x), x != PAD_ID)
        return self.layers(x)
