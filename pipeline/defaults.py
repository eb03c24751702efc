"""Defaults per kind of data: what `model.name: auto` and the params left null ("auto") in params.yaml become.

One table, found by bench/choose_defaults.py (a small grid per kind over several data sets, scored on validation
data only; BENCHMARKS.md, "Per-kind defaults"). A value written in params.yaml or given as an override is never
replaced: only `auto` / null values are. `resolve` runs when params are loaded, so every stage, the MLflow params,
the run name and the resume fingerprint see the resolved values. Imports nothing heavy, like the schema.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Params

AUTO_MODEL = "auto"

# The winners of bench/choose_defaults.py per kind: the family, its key hyper-parameters, its training settings.
# An auto key a kind's table does not name (another family's section) takes the schema's default.
BY_KIND: dict[str, dict[str, Any]] = {
    "text": {
        "model.name": "cnn",
        "model.cnn.channels": [128],
        "model.cnn.embedding_dim": 128,
        "train.batch_size": 64,
        "train.lr": 0.002,
        "train.weight_decay": 1e-4,
        "train.max_epochs": 15,
        "train.monitor": "val/f1_macro",
        "train.class_weights": "none",
    },
    "image": {
        "model.name": "cnn",
        "model.cnn.channels": [32, 64],
        "train.batch_size": 64,
        "train.lr": 0.003,
        "train.weight_decay": 1e-4,
        "train.max_epochs": 40,
        "train.monitor": "val/loss",
        "train.class_weights": "none",
    },
    "tabular": {
        "model.name": "mlp",
        "model.mlp.hidden_dims": [64],
        "model.mlp.dropout": 0.3,
        "train.batch_size": 16,
        "train.lr": 0.01,
        "train.weight_decay": 0.1,
        "train.max_epochs": 100,
        "train.monitor": "val/loss",
        "train.class_weights": "none",
        "train.ema_decay": 0.995,
    },
}

# The keys `auto` may resolve: null or left out of params.yaml (model.name: auto) means "chosen per data kind".
AUTO_KEYS = (
    "model.name",
    "model.mlp.hidden_dims",
    "model.mlp.dropout",
    "model.cnn.channels",
    "model.cnn.embedding_dim",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.max_epochs",
    "train.monitor",
    "train.class_weights",
    "train.ema_decay",
)


def mark_unset(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of raw params (params.yaml with overrides) in which every auto key left out is null (model.name:
    auto), so that it is resolved like one written as null rather than taking the schema's default."""
    data = copy.deepcopy(data)
    for key in AUTO_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if leaf not in node:
            node[leaf] = AUTO_MODEL if key == "model.name" else None
    return data


def resolve(params: Params, kind: str) -> list[str]:
    """Fill every auto key of `params` that is null (model.name: auto), in place, from `kind`'s table, else the
    schema's default; return the keys filled. Keys holding a value (the user's, or an earlier resolve's) stay."""
    table = BY_KIND[kind]
    filled = []
    for key in AUTO_KEYS:
        *parents, leaf = key.split(".")
        node: Any = params
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, leaf)
        if value is None or (key == "model.name" and value == AUTO_MODEL):
            setattr(node, leaf, copy.deepcopy(table[key]) if key in table else getattr(type(node)(), leaf))
            filled.append(key)
    return filled


def describe(params: Params, kind: str, auto_keys: list[str] | tuple[str, ...]) -> str:
    """One line: `model.name auto -> cnn (text defaults: lr 0.002, max_epochs 15, ...)`, or the explicit model."""
    name = params.model.name
    head = f"model.name auto -> {name}" if "model.name" in auto_keys else f"model.name {name}"
    shown = []
    for key in auto_keys:
        if key == "model.name":
            continue
        if key.startswith("model.") and not key.startswith(f"model.{name}."):
            continue  # another family's section: not used by this run
        if key.endswith(".embedding_dim") and kind == "image":
            continue  # embeds tokens: images have none
        *parents, leaf = key.split(".")
        node: Any = params
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, leaf)
        shown.append(f"{leaf} {value:g}" if isinstance(value, float) else f"{leaf} {value}")
    return f"{head} ({kind} defaults: {', '.join(shown)})" if shown else f"{head} (no {kind} defaults applied)"
