"""What each network needs and accepts, without torch: read by the params schema (before any heavy import) and by
the networks themselves, so the two never disagree."""

from __future__ import annotations

PAD_ID = 0  # token id of text padding, at the end of every sequence
# Index of a table's missing or never-seen category, in every categorical column (known categories are 1..K).
UNKNOWN_CATEGORY = 0

# The kinds of prepared data each `model.name` takes.
MODEL_INPUTS = {
    "mlp": ("tabular", "image", "text"),
    "cnn": ("image", "text"),
    "rnn": ("image", "text"),
    "transformer": ("image", "text"),
}
# The networks that read tables' categorical embedding indices (`data.tabular.categorical_encoding: embedding`).
EMBEDDING_READERS = ("mlp",)
MAX_SUGGESTED_HEADS = 16  # the n_heads values a message suggests go no higher


def model_input_problem(model_name: str, kind: str) -> str | None:
    """Why `model_name` cannot take `kind` data, or None."""
    if kind in MODEL_INPUTS.get(model_name, ()):
        return None
    fits = [name for name, kinds in MODEL_INPUTS.items() if kind in kinds]
    return (
        f"model.name '{model_name}' cannot take {kind} data (it takes {' or '.join(MODEL_INPUTS[model_name])}); "
        f"for {kind} data use model.name: {' or '.join(fits)}."
    )


def embedding_indices_problem(model_name: str) -> str | None:
    """Why `model_name` cannot read categorical embedding indices, or None."""
    if model_name in EMBEDDING_READERS:
        return None
    return (
        f"model.name '{model_name}' cannot read categorical embedding indices; use model.name: "
        f"{' or '.join(EMBEDDING_READERS)}, or data.tabular.categorical_encoding: onehot."
    )


def heads_problem(d_model: int, n_heads: int) -> str | None:
    """Why a Transformer of width `d_model` cannot have `n_heads` attention heads, or None."""
    if d_model % n_heads == 0:
        return None
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0 and h <= MAX_SUGGESTED_HEADS]
    return (
        f"model.transformer.d_model ({d_model}) must be divisible by model.transformer.n_heads ({n_heads}); "
        f"with d_model {d_model}, n_heads can be one of {divisors}."
    )
