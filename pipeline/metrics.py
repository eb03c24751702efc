"""Test-set metrics and the confusion-matrix figure, computed by scikit-learn from labels and predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix


@dataclass
class Evaluation:
    summary: dict  # the DVC metrics file: accuracy, macro/weighted averages, per class
    confusion: np.ndarray  # counts, rows = actual, columns = predicted
    report: str  # scikit-learn's classification report, as text

    @property
    def confusion_normalised(self) -> np.ndarray:
        """Each row divided by its total: the share of each actual class predicted as each class."""
        totals = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0)

    def flat_metrics(self, prefix: str = "test/") -> dict[str, float]:
        """`test/accuracy`, `test/macro_f1`, `test/class_<name>_recall`... for MLflow."""
        flat = {f"{prefix}accuracy": self.summary["accuracy"]}
        for avg in ("macro", "weighted"):
            for name, value in self.summary[avg].items():
                flat[f"{prefix}{avg}_{name}"] = value
        for cls, values in self.summary["per_class"].items():
            for name, value in values.items():
                if name != "support":
                    flat[f"{prefix}class_{cls}_{name}"] = value
        return flat


def evaluate_predictions(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> Evaluation:
    labels = list(range(len(class_names)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=class_names, output_dict=True,
                                   zero_division=0)

    def scores(entry: dict) -> dict:
        return {"precision": entry["precision"], "recall": entry["recall"], "f1": entry["f1-score"]}

    summary = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro": scores(report["macro avg"]),
        "weighted": scores(report["weighted avg"]),
        "per_class": {name: {**scores(report[name]), "support": int(report[name]["support"])}
                      for name in class_names},
        "n_samples": int(len(y_true)),
    }
    return Evaluation(
        summary=summary,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        report=classification_report(y_true, y_pred, labels=labels, target_names=class_names, digits=4,
                                     zero_division=0),
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

    n = len(class_names)
    annotated = n <= MAX_ANNOTATED_CLASSES
    size = max(6.0, 0.5 * n + 3) if annotated else HEATMAP_PANEL_INCHES
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title, fmt in ((axes[0], evaluation.confusion, "Counts", "d"),
                                   (axes[1], evaluation.confusion_normalised, "Normalised by actual class", ".2f")):
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
    fig.suptitle(f"Test accuracy {evaluation.summary['accuracy']:.4f}")
    fig.tight_layout()
    return fig
