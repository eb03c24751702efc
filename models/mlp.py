from __future__ import annotations

import math

from torch import Tensor, nn


class MLP(nn.Module):
    """Flattens any input and applies Linear-ReLU-Dropout blocks, then a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden_dims: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
