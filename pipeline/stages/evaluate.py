"""Stage 3, evaluate: the trained model on the test split; metrics, confusion matrices, all logged to train's run.

    python -m pipeline.stages.evaluate --prepared data/prepared --model outputs/model --out outputs/eval

Writes `metrics.json` and `baseline.json` (DVC metrics files: the model's headline metrics and a classical
baseline's, see pipeline/evaluation/baseline.py), `per_class.json` (precision, recall, F1 and
support per class: a DVC bar plot), `confusion.json` (DVC plot rows {actual, predicted} for the `confusion`
templates), `confusion_matrix.png` and `classification_report.txt`, and logs them into the MLflow run named in
`<model>/mlflow_run.json`: `test/<headline>` metrics, the per-class table, the confusion matrix at the artifact root
(the compare view shows it side by side) and as an MLflow image (the chart view). Reads `evaluate`, `mlflow`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline import console, tracking
from pipeline.artifacts import (
    CONFUSION_PLOT_FILE,
    CONFUSION_PNG,
    EVAL_FILES,
    METRICS_FILE,
    PER_CLASS_FILE,
    REPORT_FILE,
    model_path,
    open_split,
    read_meta,
    read_run_file,
)
from pipeline.config import load_params, to_flat_dict
from pipeline.errors import run_cli
from pipeline.evaluation import baseline
from pipeline.files import atomic_path, write_json
from pipeline.training.threads import configure_threads

log = console.get_logger(__name__)

CONFUSION_IMAGE_KEY = "confusion_matrix"  # an MLflow image (log_image): the experiment's chart view shows it
PER_CLASS_TABLE = "evaluation/per_class_table.json"  # an MLflow table artifact
FIGURE_DPI = 100


def predict_split(model_path: Path, prepared_dir: Path, split: str, batch_size: int) -> tuple[np.ndarray, ...]:
    """Labels, predicted labels and class probabilities of one prepared split, read a batch at a time."""
    # not pipeline.training.datamodule: it would import Lightning, seconds of start-up evaluate does not need
    import torch

    from pipeline.data import model_input, split_inputs
    from pipeline.training.trained_model import load_trained_model, predict_proba

    net, _ = load_trained_model(model_path)
    y = np.array(open_split(prepared_dir, split, "y"))
    probs = torch.cat(
        [
            predict_proba(net, torch.from_numpy(model_input(x)), batch_size)
            for x in split_inputs(prepared_dir, split, batch_size)
        ]
    )
    return y, probs.argmax(dim=1).numpy(), probs.numpy()


def evaluate(
    prepared_dir: Path,
    model_dir: Path,
    out_dir: Path,
    batch_size: int,
    uri: str,
    run_params: dict | None = None,
    register_as: str | None = None,
    with_baseline: bool = True,
    system_metrics: bool = False,
) -> dict:
    """Evaluate, write the outputs and log them with `run_params` (those the run does not have yet); log the
    pyfunc model and, with `register_as`, register it as a new version with its test metrics as tags. Returns the
    headline metrics."""
    import matplotlib.pyplot as plt

    from pipeline.evaluation.metrics import confusion_figure, evaluate_predictions

    run_id = read_run_file(model_dir).run_id
    meta = read_meta(prepared_dir)
    class_names = meta["class_names"]
    model_file = model_path(model_dir)

    with tracking.continue_run(uri, run_id, system_metrics) as run:
        import mlflow

        y_true, y_pred, _ = predict_split(model_file, prepared_dir, "test", batch_size)
        evaluation = evaluate_predictions(y_true, y_pred, class_names)

        with atomic_path(out_dir, EVAL_FILES) as tmp:
            tmp.mkdir()
            write_json(tmp / METRICS_FILE, evaluation.headline)
            write_json(tmp / PER_CLASS_FILE, evaluation.per_class)
            write_json(
                tmp / CONFUSION_PLOT_FILE,
                [{"actual": class_names[a], "predicted": class_names[p]} for a, p in zip(y_true, y_pred, strict=True)],
            )
            (tmp / REPORT_FILE).write_text(evaluation.report)
            fig = confusion_figure(evaluation, class_names)
            fig.savefig(tmp / CONFUSION_PNG, dpi=FIGURE_DPI, bbox_inches="tight")
            plt.close(fig)
            compared = baseline.run(
                prepared_dir,
                tmp,
                run.data.params.get("model.name", "model"),
                evaluation.headline["f1_macro"],
                enabled=with_baseline,
            )
        mlflow.log_params({k: v for k, v in (run_params or {}).items() if k not in run.data.params})
        test_metrics = evaluation.flat_metrics()
        mlflow.log_metrics(test_metrics)
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
        if "feature_summary" in meta:  # tables: which columns became which inputs, and which were left out
            mlflow.log_dict(meta["feature_summary"], "data/feature_summary.json")
        # The UI's compare view offers only files at the artifact root: there it shows the runs' matrices side by side.
        mlflow.log_artifact(str(out_dir / CONFUSION_PNG))
        mlflow.log_table(
            {column: [row[column] for row in evaluation.per_class] for column in evaluation.per_class[0]},
            artifact_file=PER_CLASS_TABLE,
        )
        from PIL import Image

        with Image.open(out_dir / CONFUSION_PNG) as image:  # our own file, just written
            mlflow.log_image(image.convert("RGB"), key=CONFUSION_IMAGE_KEY, step=0)
        from pipeline.serving.pyfunc import log_pyfunc_model, register

        model_info = log_pyfunc_model(prepared_dir, model_dir)
        if register_as:
            version = register(model_info.model_uri, register_as, test_metrics)
            log.info(f"evaluate: registered as {register_as} version {version.version}")
        log.info("evaluate: test " + ", ".join(f"{name} {value:.4f}" for name, value in evaluation.headline.items()))
        log.info(f"evaluate: {compared}")
        log.info(
            f"evaluate: logged to MLflow run {run.info.run_id}\nevaluate: {tracking.run_url(uri, run.info.run_id)}"
        )
    return evaluation.headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output folder")
    parser.add_argument("--model", type=Path, required=True, help="the train stage's output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics, plots and the report")
    args = parser.parse_args()
    params = load_params()
    console.quiet_libraries()
    uri = tracking.tracking_uri(params.mlflow)
    tracking.check_reachable(uri)
    tracking.configure_client(uri, params.mlflow.max_unreachable_s, "evaluate")
    read_run_file(args.model)  # before the store is opened: no trained model, nothing to log to
    configure_threads(params.trainer.num_threads)
    with tracking.outage_ends_clearly(
        uri, params.mlflow.max_unreachable_s, "evaluate", "Rerun `dvc repro` once it answers again."
    ):
        evaluate(
            args.prepared,
            args.model,
            args.out,
            params.evaluate.batch_size,
            uri,
            run_params={k: v for k, v in to_flat_dict(params).items() if k.startswith("evaluate.")},
            register_as=params.mlflow.register_model,
            with_baseline=params.evaluate.baseline,
            system_metrics=params.mlflow.system_metrics,
        )


if __name__ == "__main__":
    run_cli(main)
