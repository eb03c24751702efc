from __future__ import annotations

from torch import Tensor, nn


class CNN(nn.Module):
    """2-D convolutional classifier for (channels, height, width) images.

    Each entry of `channels` is a block: conv ('same' padding), batch norm, ReLU, then a 2x2 max-pool, so every
    block halves the image; the flattened features go through one hidden dense layer to the classifier.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: list[int], kernel_size: int,
                 hidden_dim: int, dropout: float):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs image input (channels, height, width), got shape {input_shape}; "
                             "use model.name: mlp for tabular data.")
        in_channels, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise ValueError(f"{len(channels)} conv blocks halve a {height}x{width} image below 1 pixel; "
                             f"use at most {min(height, width).bit_length() - 1} entries in model.cnn.channels.")
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, kernel_size, padding="same"),
                       nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        flat = in_channels * (height >> len(channels)) * (width >> len(channels))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden_dim), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
