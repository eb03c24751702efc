"""Test-set metrics and the confusion-matrix figure, computed by scikit-learn from labels and predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support

from pipeline.config import HEADLINE_METRICS

__all__ = ["HEADLINE_METRICS", "Evaluation", "confusion_figure", "evaluate_predictions", "headline_metrics"]


@dataclass
class Evaluation:
    headline: dict[str, float]  # HEADLINE_METRICS: the DVC metrics file
    per_class: list[dict]  # one row per class: class, precision, recall, f1, support (a DVC bar plot)
    confusion: np.ndarray  # counts, rows = actual, columns = predicted
    report: str  # scikit-learn's classification report, as text

    @property
    def confusion_normalised(self) -> np.ndarray:
        """Each row divided by its total: the share of each actual class predicted as each class."""
        totals = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0)

    def flat_metrics(self, prefix: str = "test/") -> dict[str, float]:
        """`test/accuracy`, `test/f1_macro`... for MLflow: the headline only (per class goes in a table)."""
        return {f"{prefix}{name}": value for name, value in self.headline.items()}


def headline_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """HEADLINE_METRICS of predictions over classes 0..num_classes-1 (a class never seen scores 0, not NaN)."""
    labels = list(range(num_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    _, _, f1_weighted, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_weighted": float(f1_weighted),
    }


def evaluate_predictions(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> Evaluation:
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(class_names, precision, recall, f1, support, strict=True)
    ]
    return Evaluation(
        headline=headline_metrics(y_true, y_pred, len(class_names)),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        report=classification_report(
            y_true, y_pred, labels=labels, target_names=class_names, digits=4, zero_division=0
        ),
    )


# Above this many classes the cells are too small to write numbers in (and a text object per cell took minutes and
# gigabytes at 1000 classes): the matrices are drawn as heat maps of a fixed size instead.
MAX_ANNOTATED_CLASSES = 30
MAX_LABELLED_CLASSES = 60  # class names on the axes up to this many; beyond, class indices
HEATMAP_PANEL_INCHES = 10.0


def confusion_figure(evaluation: Evaluation, class_names: list[str]):
    """Counts and row-normalised shares side by side, class names on both axes; memory and size bounded whatever
    the number of classes."""
    import matplotlib

    matplotlib.use("Agg")  # no display: stages run headless
    import matplotlib.pyplot as plt

    # Sized for MLflow's image panes (about 600-900 px wide): at 100 dpi a 10-class figure is ~1000 px wide, so its
    # cell numbers stay legible when the pane scales it down, unlike the 1900 px of 8-inch panels. Above
    # MAX_ANNOTATED_CLASSES a fixed-size heat map without per-cell text keeps memory and time bounded.
    n = len(class_names)
    annotated = n <= MAX_ANNOTATED_CLASSES
    size = max(4.0, 0.35 * n + 1.5) if annotated else HEATMAP_PANEL_INCHES
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title, fmt in (
        (axes[0], evaluation.confusion, "Counts", "d"),
        (axes[1], evaluation.confusion_normalised, "Normalised by actual class", ".2f"),
    ):
        if annotated:
            from sklearn.metrics import ConfusionMatrixDisplay

            display = ConfusionMatrixDisplay(matrix, display_labels=class_names)
            display.plot(ax=ax, values_format=fmt, colorbar=False, cmap="Blues")
        else:
            image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
            if n <= MAX_LABELLED_CLASSES:
                ax.set_xticks(range(n), class_names, rotation=90, fontsize=6)
                ax.set_yticks(range(n), class_names, fontsize=6)
        ax.set_title(title)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
    fig.suptitle(f"Test accuracy {evaluation.headline['accuracy']:.4f}")
    fig.tight_layout()
    return fig
