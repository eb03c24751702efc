from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from models.specs import PAD_ID

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNN(nn.Module):
    """LSTM or GRU over a sequence, classified from the last layer's final hidden state.

    Text is a sequence of token embeddings; an image is a sequence of its rows, each row's pixels (all channels)
    one time step. With `bidirectional` the forward and backward final states are concatenated.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
        *,
        cell: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.rnn.cell '{cell}' is not one of {', '.join(CELLS)}.")
        if vocab_size is not None:
            if embedding_dim is None:
                raise ValueError("RNN on text needs model.rnn.embedding_dim, the size of each token's embedding.")
            self.embedding: nn.Embedding | None = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
            step_size = embedding_dim
        elif len(input_shape) == 3:
            self.embedding = None
            channels, _height, width = input_shape
            step_size = channels * width
        else:
            raise ValueError(
                f"RNN needs sequences (text, or images of shape (channels, height, width)), got shape "
                f"{input_shape}; use model.name: mlp for tabular data."
            )
        # PyTorch applies this dropout between stacked layers only, and warns if there is just one.
        self.rnn = CELLS[cell](
            step_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.directions * hidden_size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        steps: Tensor | PackedSequence
        if self.embedding is None:
            # (batch, channels, height, width) -> (batch, height, channels * width): one row per time step.
            steps = x.permute(0, 2, 1, 3).flatten(start_dim=2)
        else:
            # Packing stops each text at its last real token, so the final state never reads padding. An empty
            # text keeps one (PAD) step, as packing rejects length 0; its PAD embedding is all zeros.
            lengths = (x != PAD_ID).sum(dim=1).clamp(min=1)
            steps = pack_padded_sequence(self.embedding(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(steps)
        hidden = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (hidden, cell)
        # hidden is (layers * directions, batch, hidden_size); the last `directions` rows are the top layer's.
        last_layer = torch.cat(list(hidden[-self.directions :]), dim=1)
        return self.classifier(last_layer)
