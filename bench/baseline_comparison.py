"""The model a user gets with params.yaml's defaults (all but the data section; `model.name: mlp` for tables, which
the default cnn cannot take) against the classical baseline evaluate fits on the same split, on the built-in data sets
and the SMS corpus (../shared/data/sms_spam, as its TSV and as a CSV with a header).

    OMP_NUM_THREADS=1 .venv/bin/python bench/baseline_comparison.py [--only digits sms_tsv ...]

Runs the three stages as `dvc repro` would (prepare, train, evaluate as subprocesses in a scratch folder with its own
MLflow store) and prints per data set: the model's and the baseline's test accuracy and macro F1, the difference, the
baseline's fit time and the train stage's wall time (the baseline's cost as a share of training).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMS = REPO.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"


def sms_csv(folder: Path) -> Path:
    """The corpus as a user's CSV: a header `label,message`, messages quoted where they need it."""
    path = folder / "sms.csv"
    with open(SMS, encoding="utf-8") as src, open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["label", "message"])
        for line in src:
            label, _, text = line.rstrip("\r\n").partition("\t")
            writer.writerow([label, text])
    return path


def data_sections(folder: Path) -> dict[str, dict]:
    return {
        "digits": {"dataset": "digits"},
        "breast_cancer": {"dataset": "breast_cancer"},
        "wine": {"dataset": "wine"},
        "iris": {"dataset": "iris"},
        "sms_tsv": {"dataset": str(SMS), "kind": "text"},
        "sms_csv": {
            "dataset": str(sms_csv(folder)),
            "kind": "text",
            "text": {"text_column": "message", "label_column": "label"},
        },
    }


def run_pipeline(workdir: Path, data: dict, model_name: str | None = None) -> dict:
    """prepare + train + evaluate in `workdir` with params.yaml's defaults but `data` (merged into the data section)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in data.items():
        if isinstance(value, dict):
            params["data"][key].update(value)
        else:
            params["data"][key] = value
    if model_name:
        params["model"]["name"] = model_name
    params["trainer"]["progress_bar"] = False
    params["mlflow"].update({"tracking_uri": f"sqlite:///{workdir}/mlflow.db", "experiment_name": "bench"})
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    log, seconds = "", {}
    for stage in (
        ["pipeline.stages.prepare", "--out", "prepared"],
        [
            "pipeline.stages.train",
            "--prepared",
            "prepared",
            "--out",
            "model",
            "--checkpoints",
            "ckpt",
            "--history",
            "history.csv",
            "--cv-metrics",
            "cv.json",
        ],
        ["pipeline.stages.evaluate", "--prepared", "prepared", "--model", "model", "--out", "eval"],
    ):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", *stage], cwd=workdir, env=env, capture_output=True, text=True, check=False
        )
        seconds[stage[0]] = time.perf_counter() - start
        log += done.stdout + done.stderr
        if done.returncode:
            raise SystemExit(f"{stage[0]} failed:\n{log[-3000:]}")
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    baseline = json.loads((workdir / "eval" / "baseline.json").read_text())
    from mlflow import MlflowClient

    (run,) = MlflowClient(f"sqlite:///{workdir}/mlflow.db").search_runs(
        [MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_experiment_by_name("bench").experiment_id]
    )
    return {
        "log": log,
        "model": metrics["f1_macro"],
        "model_acc": metrics["accuracy"],
        "per_class": metrics["per_class"],
        "baseline": baseline["f1_macro"],
        "baseline_acc": baseline["accuracy"],
        "baseline_name": run.data.params["baseline.model"],
        "baseline_s": run.data.metrics["baseline/fit_seconds"],
        "train_s": seconds["pipeline.stages.train"],
        "n_test": metrics["n_samples"],
    }


def main() -> None:
    sys.path.insert(0, str(REPO))  # pipeline.evaluation.baseline, for the spam F1 of the baseline
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="data sets to run (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sections = data_sections(Path(tmp))
        print(
            f"{'data':<14} {'model':<6} {'acc':>6} {'F1':>6} | {'baseline':<18} {'acc':>6} {'F1':>6} | "
            f"{'F1 diff':>7} {'test rows':>9} | {'base s':>6} {'train s':>7} {'share':>6}"
        )
        for name, data in sections.items():
            if args.only and name not in args.only:
                continue
            kind = "tabular" if name in ("breast_cancer", "wine", "iris") else None
            model = "mlp" if kind else yaml.safe_load((REPO / "params.yaml").read_text())["model"]["name"]
            r = run_pipeline(Path(tmp) / name, data, "mlp" if kind else None)
            extra = ""
            if name.startswith("sms"):  # the issue's figure: F1 of the spam class, model and baseline
                from sklearn.metrics import f1_score

                from pipeline.data import read_split
                from pipeline.evaluation.baseline import fit_and_score

                base = fit_and_score(Path(tmp) / name / "prepared")
                test = read_split(Path(tmp) / name / "prepared", "test")
                spam = f1_score(test["y"], base.predicted, pos_label=1)  # classes sorted: ham 0, spam 1
                extra = f"  spam F1 {r['per_class']['spam']['f1']:.4f} vs {spam:.4f}"
            print(
                f"{name:<14} {model:<6} {r['model_acc']:.4f} {r['model']:.4f} | {r['baseline_name']:<18} "
                f"{r['baseline_acc']:.4f} {r['baseline']:.4f} | {r['model'] - r['baseline']:+.4f} {r['n_test']:>9} | "
                f"{r['baseline_s']:>6.2f} {r['train_s']:>7.1f} {r['baseline_s'] / r['train_s']:>6.1%}{extra}",
                flush=True,
            )


if __name__ == "__main__":
    main()
