from __future__ import annotations

from torch import Tensor, nn

from models.specs import PAD_ID


class CNN(nn.Module):
    """Convolutional classifier: 2-D over (channels, height, width) images, 1-D over the token embeddings of text.

    Each entry of `channels` is a block: conv ('same' padding), batch norm, ReLU, then a max-pool of 2, so every
    block halves the image (or the sequence). Image features are flattened; text features are max-pooled over
    time, so each filter reports whether its n-gram occurs anywhere. One hidden dense layer leads to the classifier.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
        *,
        channels: list[int],
        kernel_size: int,
        hidden_dim: int,
        dropout: float,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        if vocab_size is None:
            self.embedding = None
            self.features, width = _image_features(input_shape, channels, kernel_size)
        else:
            if embedding_dim is None:
                raise ValueError("CNN on text needs model.cnn.embedding_dim, the size of each token's embedding.")
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
            self.features, width = _text_features(input_shape, embedding_dim, channels, kernel_size)
        # Flatten is a no-op on text's pooled features; it stays first so image models keep their state_dict keys.
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is None:
            return self.classifier(self.features(x))
        # Conv1d wants (batch, embedding, time); the max over time makes the width independent of max_len.
        features = self.features(self.embedding(x).transpose(1, 2))
        return self.classifier(features.amax(dim=2))


def _image_features(input_shape: tuple[int, ...], channels: list[int], kernel_size: int) -> tuple[nn.Module, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"CNN needs image input (channels, height, width), got shape {input_shape}; "
            "use model.name: mlp for tabular data."
        )
    in_channels, height, width = input_shape
    if min(height, width) < 2 ** len(channels):
        raise ValueError(
            f"{len(channels)} conv blocks halve a {height}x{width} image below 1 pixel; "
            f"use at most {min(height, width).bit_length() - 1} entries in model.cnn.channels."
        )
    flat = channels[-1] * (height >> len(channels)) * (width >> len(channels))
    return conv_blocks(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, in_channels, channels, kernel_size), flat


def _text_features(
    input_shape: tuple[int, ...], embedding_dim: int, channels: list[int], kernel_size: int
) -> tuple[nn.Module, int]:
    if len(input_shape) != 1:
        raise ValueError(f"CNN on text needs input shape (max_len,), got {input_shape}.")
    (max_len,) = input_shape
    if max_len < 2 ** len(channels):
        raise ValueError(
            f"{len(channels)} conv blocks halve a {max_len}-token text below 1 token; "
            f"use at most {max_len.bit_length() - 1} entries in model.cnn.channels, "
            "or a larger data.text.max_len."
        )
    return conv_blocks(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, embedding_dim, channels, kernel_size), channels[-1]


def conv_blocks(
    conv: type[nn.Module],
    norm: type[nn.Module],
    pool: type[nn.Module],
    in_channels: int,
    channels: list[int],
    kernel_size: int,
) -> nn.Sequential:
    """conv -> batch norm -> ReLU -> 2x max pool, once per entry of `channels` (1-D for text, 2-D for images)."""
    blocks: list[nn.Module] = []
    for out_channels in channels:
        blocks += [conv(in_channels, out_channels, kernel_size, padding="same"), norm(out_channels), nn.ReLU(), pool(2)]
        in_channels = out_channels
    return nn.Sequential(*blocks)
