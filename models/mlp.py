from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.specs import PAD_ID, UNKNOWN_CATEGORY

# Token id the prepare stage pads every text with, at the end; shared by every text model.


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of (batch, length, features) over the positions where `keep` (batch, length) is true.

    A row with nothing to keep (an empty text) gives zeros rather than 0 / 0.
    """
    keep = keep.unsqueeze(-1).to(values.dtype)
    return (values * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def category_embedding_dim(cardinality: int, embedding_dim: int) -> int:
    """Width of one categorical column's embedding: `embedding_dim`, but no wider than the column's number of known
    categories (K vectors span at most K dimensions, so more would only add parameters)."""
    return max(1, min(embedding_dim, cardinality))


class MLP(nn.Module):
    """Linear-ReLU-Dropout blocks, then a linear classifier.

    Images are flattened. Tabular rows are read as they are, unless `categorical_cardinalities` is given: then the
    last len(categorical_cardinalities) features of a row are category indices (0 missing or unknown, 1..K known),
    each embedded in `category_embedding_dim(K, embedding_dim)` dimensions and concatenated with the numeric
    features before the first layer. The unknown index embeds to zeros. Text (token ids, `vocab_size` given) is
    embedded and averaged over its non-PAD tokens first, a bag of words whose result does not depend on how much
    padding follows the text.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
        categorical_cardinalities: list[int] | None = None,
        *,
        hidden_dims: list[int],
        dropout: float,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        self.embedding: nn.Embedding | None = None
        self.categorical_embeddings: nn.ModuleList | None = None
        width = math.prod(input_shape)
        if vocab_size is not None:
            if embedding_dim is None:
                raise ValueError("MLP on text needs model.mlp.embedding_dim, the size of each token's embedding.")
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
            width = embedding_dim
        elif categorical_cardinalities:
            if embedding_dim is None:
                raise ValueError(
                    "MLP on categorical indices needs model.mlp.embedding_dim, the largest size of a "
                    "category's embedding."
                )
            if len(input_shape) != 1 or input_shape[0] < len(categorical_cardinalities):
                raise ValueError(
                    f"MLP: {len(categorical_cardinalities)} categorical columns do not fit rows of shape {input_shape}."
                )
            self.numeric_features = input_shape[0] - len(categorical_cardinalities)
            embeddings = [
                nn.Embedding(k + 1, category_embedding_dim(k, embedding_dim), padding_idx=UNKNOWN_CATEGORY)
                for k in categorical_cardinalities
            ]
            self.categorical_embeddings = nn.ModuleList(embeddings)
            width = self.numeric_features + sum(e.embedding_dim for e in embeddings)
        layers: list[nn.Module] = [nn.Flatten()]
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            x = masked_mean(self.embedding(x), x != PAD_ID)
        elif self.categorical_embeddings is not None:
            # Indices travel as float32 beside the numeric features (exact below 2**24 categories).
            indices = x[:, self.numeric_features :].long()
            x = torch.cat(
                [
                    x[:, : self.numeric_features],
                    *(embed(indices[:, j]) for j, embed in enumerate(self.categorical_embeddings)),
                ],
                dim=1,
            )
        return self.layers(x)
