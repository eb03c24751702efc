"""Every network on every kind of input it reads: shapes, gradients, learnability, padding, and clear refusals.

The networks are built the way the train stage builds them, from `dataclasses.asdict` of their params section, so
a constructor that drifts from the schema fails here first. Sizes are tiny to keep the file fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.registry import REGISTRY, build_model
from models.specs import PAD_ID
from pipeline.config import CNNParams, MLPParams, ModelParams, RNNParams, TransformerParams

NUM_CLASSES = 4
BATCH = 16
MAX_LEN = 20
VOCAB = 50
TRAIN_STEPS = 30

# name -> (input_shape, vocab_size)
INPUTS = {
    "tabular": ([13], None),
    "grey-image": ([1, 8, 8], None),
    "rgb-image": ([3, 12, 12], None),
    "text": ([MAX_LEN], VOCAB),
}

RNN_SMALL = RNNParams(hidden_size=16, num_layers=2, dropout=0.1, embedding_dim=16)
TRANSFORMER_SMALL = TransformerParams(d_model=16, n_heads=2, num_layers=2, dim_feedforward=32, dropout=0.1)
# variant id -> (registry name, params section); every RNN cell and direction, every transformer pooling.
VARIANTS = {
    "mlp": ("mlp", MLPParams(hidden_dims=[32, 16], dropout=0.1, embedding_dim=16)),
    "cnn": ("cnn", CNNParams(channels=[8, 16], kernel_size=3, hidden_dim=32, dropout=0.1, embedding_dim=16)),
    **{
        f"rnn-{cell}-{'bi' if bi else 'uni'}": ("rnn", dataclasses.replace(RNN_SMALL, cell=cell, bidirectional=bi))
        for cell in ("lstm", "gru")
        for bi in (True, False)
    },
    **{
        f"transformer-{pooling}": ("transformer", dataclasses.replace(TRANSFORMER_SMALL, pooling=pooling))
        for pooling in ("cls", "mean")
    },
}
SEQUENCE_INPUTS = ("grey-image", "rgb-image", "text")
SUPPORTED = {"mlp": tuple(INPUTS), "cnn": SEQUENCE_INPUTS, "rnn": SEQUENCE_INPUTS, "transformer": SEQUENCE_INPUTS}
CASES = [(variant, kind) for variant, (name, _) in VARIANTS.items() for kind in SUPPORTED[name]]
CASE_IDS = [f"{variant}-{kind}" for variant, kind in CASES]


def build(variant: str, kind: str, **overrides) -> nn.Module:
    name, params = VARIANTS[variant]
    input_shape, vocab_size = INPUTS[kind]
    return build_model(
        name, dataclasses.asdict(dataclasses.replace(params, **overrides)), input_shape, NUM_CLASSES, vocab_size
    )


def pad(rows: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([row + [PAD_ID] * (length - len(row)) for row in rows], dtype=torch.int64)


def batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch and balanced labels; text has every length from empty (all PAD) to max_len."""
    generator = torch.Generator().manual_seed(0)
    input_shape, vocab_size = INPUTS[kind]
    labels = torch.arange(BATCH) % NUM_CLASSES
    if vocab_size is None:
        return torch.randn(BATCH, *input_shape, generator=generator), labels
    lengths = torch.randint(1, MAX_LEN + 1, (BATCH,), generator=generator)
    lengths[0], lengths[1] = 0, MAX_LEN
    tokens = torch.randint(PAD_ID + 1, vocab_size, (BATCH, MAX_LEN), generator=generator)
    tokens[torch.arange(MAX_LEN) >= lengths[:, None]] = PAD_ID
    return tokens, labels


# ---------------------------------------------------------------------------------------------------------------
# The contract with the pipeline
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_constructor_takes_exactly_the_schema_fields(name: str) -> None:
    signature = inspect.signature(REGISTRY[name])
    assert list(signature.parameters)[:3] == ["input_shape", "num_classes", "vocab_size"]
    assert signature.parameters["vocab_size"].default is None
    keyword_only = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == [f.name for f in dataclasses.fields(getattr(ModelParams(), name))]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_schema_defaults_build_for_text(name: str) -> None:
    net = build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [MAX_LEN], NUM_CLASSES, VOCAB)
    net.eval()
    with torch.no_grad():
        assert net(batch("text")[0]).shape == (BATCH, NUM_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# Every network on every input it supports
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "kind"), CASES, ids=CASE_IDS)
def test_logits_are_finite_and_gradients_reach_every_parameter(variant: str, kind: str) -> None:
    torch.manual_seed(0)
    net = build(variant, kind)
    x, y = batch(kind)

    net.train()
    logits = net(x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"

    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    # Text row 0 is all PAD (an empty text after cleaning).
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("variant", "kind"), CASES, ids=CASE_IDS)
def test_a_few_steps_fit_a_fixed_batch(variant: str, kind: str) -> None:
    # Balanced labels on random inputs: a network whose output ignores its input cannot go below log(classes),
    # so halving the loss shows the input reaches the logits through trainable weights.
    torch.manual_seed(0)
    net = build(variant, kind, dropout=0.0)
    x, y = batch(kind)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------------------------
# The CNN is left out: its convolutions and batch norm turn PAD positions into non-zero features that can win the
# max over time, so extra padding may change its output (as it may for any text CNN without masking).
@pytest.mark.parametrize("variant", [v for v, (name, _) in VARIANTS.items() if name != "cnn"])
def test_trailing_padding_does_not_change_the_output(variant: str) -> None:
    torch.manual_seed(0)
    name, params = VARIANTS[variant]
    net = build_model(name, dataclasses.asdict(params), [30], NUM_CLASSES, VOCAB).eval()
    rows = [[5, 7, 9, 11, 13], [], [3] * 20]
    with torch.no_grad():
        short, long = net(pad(rows, 20)), net(pad(rows, 30))
    torch.testing.assert_close(short, long)


@pytest.mark.parametrize("variant", [v for v, (name, _) in VARIANTS.items() if name != "cnn"])
def test_the_pad_embedding_stays_zero_in_training(variant: str) -> None:
    net = build(variant, "text", dropout=0.0)
    x, y = batch("text")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    embedding = next(m for m in net.modules() if isinstance(m, nn.Embedding))
    assert embedding.padding_idx == PAD_ID
    assert torch.count_nonzero(embedding.weight[PAD_ID]) == 0


# ---------------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "rnn", "transformer"])
def test_sequence_models_reject_tabular_input_and_point_to_mlp(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape("model.name: mlp")):
        build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [13], NUM_CLASSES)


@pytest.mark.parametrize("name", ["rnn", "transformer"])
def test_sequence_models_say_they_need_sequences(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs sequences \(text, or images"):
        build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [13], NUM_CLASSES)


def test_text_cnn_rejects_more_blocks_than_max_len_can_halve() -> None:
    hparams = {**dataclasses.asdict(ModelParams().cnn), "channels": [4, 4, 4, 4, 4]}  # 20 -> 10 -> 5 -> 2 -> 1 -> 0
    with pytest.raises(ValueError, match=re.escape("at most 4 entries in model.cnn.channels")):
        build_model("cnn", hparams, [MAX_LEN], NUM_CLASSES, VOCAB)
    hparams["channels"] = [4, 4, 4, 4]
    net = build_model("cnn", hparams, [MAX_LEN], NUM_CLASSES, VOCAB).eval()
    assert net(batch("text")[0]).shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize("kind", ["grey-image", "text"])
def test_transformer_rejects_d_model_not_divisible_by_n_heads(kind: str) -> None:
    with pytest.raises(ValueError, match=r"n_heads can be one of \[1, 2, 3, 4, 6, 12\]"):
        build("transformer-cls", kind, d_model=12, n_heads=5)


def test_single_layer_rnn_does_not_warn_about_dropout() -> None:
    # PyTorch warns when inter-layer dropout is set on a one-layer RNN; the dropout is for the classifier then.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = build("rnn-lstm-bi", "text", num_layers=1, dropout=0.5)
    assert net.rnn.dropout == 0.0
