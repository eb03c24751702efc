"""Test-set metrics (pipeline/evaluation/metrics.py) against numbers worked out by hand."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    HEADLINE_METRICS,
    HEATMAP_PANEL_INCHES,
    confusion_figure,
    evaluate_predictions,
    headline_metrics,
)

NAMES = ["cat", "dog", "fox"]

# Ten samples; supports: cat 4, dog 3, fox 3.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 2])

# Confusion matrix, rows = actual, columns = predicted:
#   actual cat -> predicted cat, cat, dog, fox  => [2, 1, 1]
#   actual dog -> predicted dog, dog, cat       => [1, 2, 0]
#   actual fox -> predicted fox, fox, fox       => [0, 0, 3]
CONFUSION = [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
# Accuracy: diagonal 2 + 2 + 3 = 7 of 10.
ACCURACY = 0.7
# Precision = diagonal / column total; column totals are 3, 3, 4.
PRECISION = {"cat": 2 / 3, "dog": 2 / 3, "fox": 3 / 4}
# Recall = diagonal / row total; row totals are 4, 3, 3.
RECALL = {"cat": 2 / 4, "dog": 2 / 3, "fox": 3 / 3}
# F1 = 2PR / (P + R):
#   cat: 2 * (2/3 * 1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
#   dog: P = R = 2/3                  => 2/3
#   fox: 2 * (3/4 * 1) / (3/4 + 1)     = (3/2) / (7/4) = 6/7
F1 = {"cat": 4 / 7, "dog": 2 / 3, "fox": 6 / 7}
SUPPORT = {"cat": 4, "dog": 3, "fox": 3}
# Macro = plain mean over the three classes:
#   precision (2/3 + 2/3 + 3/4) / 3 = (25/12) / 3 = 25/36
#   recall    (1/2 + 2/3 + 1)   / 3 = (13/6)  / 3 = 13/18
#   f1        (4/7 + 2/3 + 6/7) / 3 = (44/21) / 3 = 44/63
MACRO = {"precision": 25 / 36, "recall": 13 / 18, "f1": 44 / 63}
# Weighted = mean weighted by support (4, 3, 3) / 10:
#   precision (4 * 2/3 + 3 * 2/3 + 3 * 3/4) / 10 = (32/12 + 24/12 + 27/12) / 10 = 83/120
#   recall    (4 * 1/2 + 3 * 2/3 + 3 * 1)   / 10 = (2 + 2 + 3) / 10           = 7/10
#   f1        (4 * 4/7 + 3 * 2/3 + 3 * 6/7) / 10 = (16/7 + 14/7 + 18/7) / 10   = 48/70 = 24/35
WEIGHTED = {"precision": 83 / 120, "recall": 7 / 10, "f1": 24 / 35}


@pytest.fixture(scope="module")
def evaluation():
    return evaluate_predictions(Y_TRUE, Y_PRED, NAMES)


def test_accuracy(evaluation) -> None:
    assert evaluation.headline["accuracy"] == pytest.approx(ACCURACY)


def test_confusion_matrix(evaluation) -> None:
    assert evaluation.confusion.tolist() == CONFUSION


def test_per_class_scores(evaluation) -> None:
    per_class = {row["class"]: row for row in evaluation.per_class}  # rows in class order: a DVC bar plot
    assert [row["class"] for row in evaluation.per_class] == NAMES
    for name in NAMES:
        assert per_class[name]["precision"] == pytest.approx(PRECISION[name]), name
        assert per_class[name]["recall"] == pytest.approx(RECALL[name]), name
        assert per_class[name]["f1"] == pytest.approx(F1[name]), name
        assert per_class[name]["support"] == SUPPORT[name]


def test_headline_metrics(evaluation) -> None:
    assert evaluation.headline == pytest.approx(
        {
            "accuracy": ACCURACY,
            "f1_macro": MACRO["f1"],
            "precision_macro": MACRO["precision"],
            "recall_macro": MACRO["recall"],
            "f1_weighted": WEIGHTED["f1"],
        }
    )
    assert list(evaluation.headline) == list(HEADLINE_METRICS)
    # The same numbers from labels and predictions alone (what a baseline model's evaluation calls).
    assert headline_metrics(Y_TRUE, Y_PRED, len(NAMES)) == evaluation.headline


def test_headline_is_flat_and_json_ready(evaluation) -> None:
    # It is written as DVC's metrics.json as is: flat keys, plain floats.
    assert json.loads(json.dumps(evaluation.headline)) == evaluation.headline
    assert all(isinstance(v, float) for v in evaluation.headline.values())


def test_confusion_normalised_rows_are_shares_of_each_actual_class(evaluation) -> None:
    normalised = evaluation.confusion_normalised
    np.testing.assert_allclose(normalised.sum(axis=1), [1.0, 1.0, 1.0])
    # Row cat: [2, 1, 1] / 4; row dog: [1, 2, 0] / 3; row fox: [0, 0, 3] / 3.
    np.testing.assert_allclose(normalised, [[0.5, 0.25, 0.25], [1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0]])
    # The diagonal of the normalised matrix is the per-class recall.
    np.testing.assert_allclose(np.diag(normalised), [RECALL[n] for n in NAMES])


def test_flat_metrics_for_mlflow(evaluation) -> None:
    flat = evaluation.flat_metrics()
    assert list(flat) == [f"test/{name}" for name in HEADLINE_METRICS]  # per class goes in a table, not 40 metrics
    assert flat["test/accuracy"] == pytest.approx(ACCURACY)
    assert flat["test/f1_macro"] == pytest.approx(44 / 63)
    assert flat["test/f1_weighted"] == pytest.approx(24 / 35)
    assert set(evaluation.flat_metrics(prefix="baseline/")) == {f"baseline/{name}" for name in HEADLINE_METRICS}


def test_class_missing_from_labels_and_predictions_scores_zero_not_nan() -> None:
    # fox (index 2) never occurs: the matrix keeps its row and column, and its scores are 0 (zero_division=0).
    evaluation = evaluate_predictions(np.array([0, 1, 1]), np.array([0, 1, 0]), NAMES)
    assert evaluation.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    np.testing.assert_allclose(evaluation.confusion_normalised, [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 0]])
    assert evaluation.per_class[2] == {"class": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert evaluation.headline["accuracy"] == pytest.approx(2 / 3)
    assert not any(np.isnan(v) for v in evaluation.flat_metrics().values())


def test_report_text_names_every_class(evaluation) -> None:
    for name in NAMES:
        assert name in evaluation.report
    assert "0.7000" in evaluation.report  # accuracy, at four digits


def test_confusion_figure_has_class_names_on_both_axes(evaluation) -> None:
    fig = confusion_figure(evaluation, NAMES)
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in axes] == ["Counts", "Normalised by actual class"]
        for ax in axes:
            assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
            assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
            assert ax.get_xlabel() == "Predicted"
            assert ax.get_ylabel() == "Actual"
        # The count panel writes each cell's count.
        counts = sorted(t.get_text() for t in axes[0].texts)
        assert counts == sorted(str(v) for row in CONFUSION for v in row)
        assert "0.7000" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_confusion_figure_of_many_classes_is_a_heat_map_of_bounded_size() -> None:
    """Past a few dozen classes no cell is written in and the figure stops growing (1000 classes once took 12 GB)."""
    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(40)]
    y_true = rng.integers(0, len(names), 2000)
    y_pred = np.where(rng.random(2000) < 0.7, y_true, rng.integers(0, len(names), 2000))
    fig = confusion_figure(evaluate_predictions(y_true, y_pred, names), names)
    try:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in axes] == ["Counts", "Normalised by actual class"]
        for ax in axes:
            assert not ax.texts  # no per-cell numbers
            assert ax.images[0].get_array().shape == (40, 40)
            assert [t.get_text() for t in ax.get_yticklabels()] == names
        assert fig.get_size_inches().tolist() == [2 * HEATMAP_PANEL_INCHES, HEATMAP_PANEL_INCHES]
    finally:
        plt.close(fig)
