from __future__ import annotations

import torch
from torch import Tensor, nn

from models.mlp import masked_mean
from models.specs import PAD_ID, heads_problem

# Standard deviation of the learned positional embeddings and CLS token at initialisation (as in BERT and ViT):
# small next to the unit-scale token embeddings, so positions start as a hint rather than noise.
INIT_STD = 0.02


class Transformer(nn.Module):
    """Pre-norm Transformer encoder over tokens, with learned positional embeddings.

    Text tokens are embedded; an image is a sequence of its rows, each row's pixels (all channels) projected to one
    token. `pooling` 'cls' classifies the output of a learned token prepended to the sequence; 'mean' averages the
    outputs at the non-PAD positions. PAD tokens are masked out of attention, so trailing padding changes nothing.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
        *,
        d_model: int,
        n_heads: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        pooling: str,
    ):
        super().__init__()
        problem = heads_problem(d_model, n_heads)
        if problem:
            raise ValueError(problem)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.transformer.pooling '{pooling}' is not one of cls, mean.")
        if vocab_size is not None:
            if len(input_shape) != 1:
                raise ValueError(f"Transformer on text needs input shape (max_len,), got {input_shape}.")
            (seq_len,) = input_shape
            self.embed: nn.Module = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
            self.text = True
        elif len(input_shape) == 3:
            channels, seq_len, width = input_shape
            self.embed = nn.Linear(channels * width, d_model)
            self.text = False
        else:
            raise ValueError(
                f"Transformer needs sequences (text, or images of shape (channels, height, width)), got "
                f"shape {input_shape}; use model.name: mlp for tabular data."
            )

        self.pooling = pooling
        if pooling == "cls":
            self.cls_token = nn.Parameter(torch.randn(1, 1, d_model) * INIT_STD)
            seq_len += 1
        self.position = nn.Parameter(torch.randn(1, seq_len, d_model) * INIT_STD)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
        )
        # Pre-norm layers leave their output un-normalised, hence the final LayerNorm. Nested tensors (a fast path
        # that drops padded positions in eval mode) would make eval outputs differ in shape from training's.
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if self.text:
            padding = x == PAD_ID
            tokens = self.embed(x)
        else:
            # (batch, channels, height, width) -> (batch, height, channels * width): one row per token.
            tokens = self.embed(x.permute(0, 2, 1, 3).flatten(start_dim=2))
            padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

        if self.pooling == "cls":
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
            padding = torch.cat([padding.new_zeros(len(padding), 1), padding], dim=1)
        else:
            # Attention over nothing but masked keys is 0 / 0; let an empty text attend to its first (PAD) token.
            padding = padding.clone()
            padding[padding.all(dim=1), 0] = False
        # Slicing lets a text shorter than max_len through, with the same positions it would have when padded.
        tokens = tokens + self.position[:, : tokens.shape[1]]

        encoded = self.encoder(tokens, src_key_padding_mask=padding)
        pooled = encoded[:, 0] if self.pooling == "cls" else masked_mean(encoded, ~padding)
        return self.classifier(pooled)
