"""`python -m pipeline.stages.tune` on breast_cancer, then the best setting's test accuracy against LogisticRegression.

    python bench/tune_breast_cancer.py [--trials 40] [--max-epochs 40] [--timeout-s SECONDS] [--workers 1]

In a throw-away git + DVC copy of this repository (in a temporary folder, deleted afterwards): params.yaml at its
defaults except `data.dataset: breast_cancer`, `model.name: mlp` and the `tune:` section below; then the real
command, `python -m pipeline.stages.tune`, which prepares the data, runs the study (every trial trained on the train
split and judged on the validation split by its best val/loss; median pruning) and trains the best setting as the DVC
experiment `tune-breast-cancer` (train + evaluate through `dvc exp run`). Printed: the study's trial counts and
time, the best trial, the experiment's test accuracy (outputs/eval/metrics.json) and LogisticRegression(max_iter=
5000), fitted on the same prepared (standardised) train split and scored on the same test rows. Nothing is chosen
on the test split: it is read once, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY = "tune-breast-cancer"
SPACE = {
    "train.lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "train.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True},
    "train.batch_size": {"choices": [16, 32, 64]},
    "model.mlp.dropout": {"low": 0.0, "high": 0.5},
    "model.mlp.hidden_dims": {"choices": [[32], [64], [256], [128, 64], [256, 128]]},
}
SETTINGS = {
    "data.dataset": "breast_cancer",
    "model.name": "mlp",
    "trainer.progress_bar": False,
    "mlflow.experiment_name": STUDY,
    "tune.study_name": STUDY,
    "tune.space": SPACE,
    "tune.metric": "val/loss",
    "tune.pruner": "median",
    "tune.pruner_startup_trials": 4,
    "tune.pruner_warmup_epochs": 4,
}


def repo_copy(dest: Path) -> None:
    """This repository's tracked and new files as a fresh git repository (DVC's config comes with them)."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file() and not name.startswith(("dvc.lock", "outputs/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def set_params(path: Path, settings: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="the study's budget (tune.n_trials)")
    parser.add_argument("--max-epochs", type=int, default=40, help="train.max_epochs of every trial and the final")
    parser.add_argument("--timeout-s", type=float, default=None, help="tune.timeout_s: the study stops after it")
    parser.add_argument("--workers", type=int, default=1, help="tune processes sharing the study (one runs the final)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        repo = Path(tmp) / "repo"
        repo_copy(repo)
        set_params(
            repo / "params.yaml",
            {
                **SETTINGS,
                "tune.n_trials": args.trials,
                "tune.workers": args.workers,
                "tune.timeout_s": args.timeout_s,
                "train.max_epochs": args.max_epochs,
            },
        )
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "breast_cancer study")

        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "prepare"], cwd=repo, env=env, check=True, capture_output=True)
        helpers = [
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.stages.tune", "--no-final"],
                cwd=repo,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.workers - 1)
        ]
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.stages.tune"], cwd=repo, env=env, capture_output=True, text=True
        )
        for helper in helpers:
            helper.wait()
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(
                f"pipeline.stages.tune exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

        import optuna
        from optuna.storages.journal import JournalFileBackend
        from sklearn.linear_model import LogisticRegression

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(repo / "optuna-journal.log")))
        study = optuna.load_study(study_name=STUDY, storage=storage)
        trials, best = study.get_trials(), study.best_trial  # from the study, not the command's console lines
        counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")}
        test_accuracy = json.loads((repo / "outputs/eval/metrics.json").read_text())["accuracy"]
        sys.path.insert(0, str(ROOT))
        from pipeline.data import read_split

        train, test = (read_split(repo / "data/prepared", split) for split in ("train", "test"))
        logreg = LogisticRegression(max_iter=5000).fit(train["x"], train["y"])
        baseline = float(logreg.score(test["x"], test["y"]))
        test_rows = len(test["y"])

    print(f"budget: {args.trials} trials, {args.max_epochs} epochs each at most, timeout {args.timeout_s} s")
    print(
        f"study: {len(trials)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed) in {seconds:.0f} s with {args.workers} worker(s), final experiment included"
    )
    print(f"best trial {best.number}: {SETTINGS['tune.metric']} {best.value:.4f} with {best.params}")
    print(f"test rows: {test_rows}")
    print(
        f"{'tuned MLP (DVC experiment ' + STUDY + ')':<46} test accuracy {test_accuracy:.4f} "
        f"({round((1 - test_accuracy) * test_rows)} errors)"
    )
    print(
        f"{'LogisticRegression(max_iter=5000)':<46} test accuracy {baseline:.4f} "
        f"({round((1 - baseline) * test_rows)} errors)"
    )
    verdict = "met" if test_accuracy >= baseline else "not met"
    print(f"goal tuned MLP >= LogisticRegression: {verdict} ({test_accuracy - baseline:+.4f})")


if __name__ == "__main__":
    main()
