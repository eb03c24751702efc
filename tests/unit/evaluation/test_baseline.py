"""The classical baseline evaluate fits beside the model: each kind's model, on the prepared splits' own rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import read_meta
from pipeline.config import DataParams, TabularParams, TextParams
from pipeline.data import read_split
from pipeline.evaluation import baseline
from pipeline.stages.prepare import prepare

SPAM_WORDS = ["win", "free", "prize", "claim", "cash", "urgent", "call", "now"]
HAM_WORDS = ["see", "you", "later", "dinner", "tonight", "thanks", "ok", "home", "love"]


def messages_file(path: Path, n: int = 240, seed: int = 0) -> Path:
    """label<TAB>text lines: spam draws from its own words, ham from others, a few words shared."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        spam = i % 4 == 0
        words = [*rng.choice(SPAM_WORDS if spam else HAM_WORDS, size=int(rng.integers(3, 9))).tolist(), "the"]
        lines.append(f"{'spam' if spam else 'ham'}\t{' '.join(words)} {i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_baseline_is_tfidf_linear_svm_on_the_raw_messages(tmp_path: Path) -> None:
    source = messages_file(tmp_path / "sms.tsv")
    # max_len 2 leaves the model two tokens per message; the baseline reads the whole raw message.
    prepare(DataParams(dataset=str(source), kind="text", text=TextParams(max_len=2)), tmp_path / "prepared")
    fitted = baseline.fit_and_score(tmp_path / "prepared")
    assert fitted is not None and fitted.name == "LinearSVC"
    assert set(fitted.scores) == set(baseline.HEADLINE_KEYS)
    assert fitted.scores["f1_macro"] == 1.0


def test_text_baseline_is_skipped_when_the_raw_file_changed(tmp_path: Path, capsys) -> None:
    source = messages_file(tmp_path / "sms.tsv")
    prepare(DataParams(dataset=str(source), kind="text"), tmp_path / "prepared")
    messages_file(source, seed=1)  # same rows, other words: not the texts the model was trained on
    assert baseline.fit_and_score(tmp_path / "prepared") is None
    assert "has changed since prepare ran" in capsys.readouterr().err


def test_image_baseline_on_the_digits(digits_prepared: Path) -> None:
    meta = read_meta(digits_prepared)
    fitted = baseline.fit_and_score(digits_prepared)
    assert fitted is not None and fitted.name == "LogisticRegression"
    assert fitted.scores["accuracy"] > 0.93
    assert len(read_split(digits_prepared, "test")["y"]) == meta["split_sizes"]["test"]


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
def test_table_baseline_with_either_categorical_encoding(tmp_path: Path, encoding: str) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue", "grey"], size=300)
    size = rng.normal(size=300)
    label = np.where(np.isin(colour, ["red", "blue"]) ^ (size > 1.5), "a", "b")
    pd.DataFrame({"colour": colour, "size": size, "label": label}).to_csv(tmp_path / "t.csv", index=False)
    params = DataParams(
        dataset=str(tmp_path / "t.csv"), tabular=TabularParams(target="label", categorical_encoding=encoding)
    )
    prepare(params, tmp_path / "prepared")
    fitted = baseline.fit_and_score(tmp_path / "prepared")
    assert fitted is not None and fitted.name == "LogisticRegression"
    assert fitted.scores["accuracy"] > 0.85  # the colour decides all but the rare large sizes


def test_switched_off_writes_an_empty_metrics_file(tmp_path: Path) -> None:
    prepare(DataParams(dataset="iris"), tmp_path / "prepared")
    line = baseline.run(tmp_path / "prepared", tmp_path, "mlp", 0.9, enabled=False)
    assert json.loads((tmp_path / baseline.BASELINE_FILE).read_text()) == {}
    assert "evaluate.baseline: false" in line


def test_scores_count_every_class_even_one_missing_from_the_test_rows() -> None:
    scores = baseline.headline_scores(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2]), num_classes=3)
    assert scores["accuracy"] == 0.75
    # class 2: never actual, predicted once -> precision 0, recall 0 (zero_division), F1 0: macro over 3 classes
    assert scores["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
