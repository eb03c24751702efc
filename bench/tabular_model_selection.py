"""MLP hyper-parameters for a built-in table chosen by k-fold cross-validation, then tested against logistic regression.

    python bench/tabular_model_selection.py [--dataset breast_cancer] [--folds 5] [--test-seeds 42 43 44]
                                            [--select-only] [--threads 1] [--split-seeds 0 1 ...]

The protocol keeps the test split out of every choice:

1. prepare splits the table as the pipeline does (train / val / test, `data.seed` 42); the scaler is fitted on the
   training split.
2. Selection, on train + val only: every MLP setting in `GRID` is scored by the pipeline's own cross-validation
   (`pipeline.training.cross_validation.cross_validate`, what `train.cv_folds` runs: stratified folds over train + val,
   each fold a real Lightning fit with early stopping, logged as nested MLflow runs into a temporary store). The setting
   with the best mean fold accuracy wins; ties go to the lower mean fold loss, then to the earlier setting in the
   grid. LogisticRegression's C is chosen on the same folds from `LOGREG_C` (same rule, ties to the smaller C).
3. Only then the test split: the chosen setting is trained by `pipeline.stages.train.fit` (on the training split, early
   stopping on the validation split, as `dvc repro` trains) with each of `--test-seeds` and scored by the evaluate
   stage, next to LogisticRegression fitted on the same standardised training split, with the default C = 1 (the
   baseline of bench/accuracy_baselines.py) and with the cross-validated C. Each MLP run also counts the test rows
   only it or only LogisticRegression(C=1) gets wrong, with the exact McNemar p-value of that difference.

4. With `--split-seeds`, steps 1-3 are repeated on each of those train/val/test splits (`data.seed`): nested
   cross-validation, the selection redone inside every split so that no split's test rows ever inform its own
   choice. The summary gives each split's choice and test accuracies, and their means: one 114-row test split moves
   by 0.0088 per row, so the mean over splits is the steadier comparison.

`--select-only` stops after step 2 (no test score is computed). Runs in a temporary folder; writes nothing else.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy_baselines import make_params, quiet, silently, train_and_evaluate
from pipeline import tracking
from pipeline.data import read_split
from pipeline.stages.evaluate import predict_split
from pipeline.stages.prepare import prepare
from pipeline.stages.train import MODEL_FILE

# Fixed for every setting: the MLP, a generous epoch budget that early stopping on the fold's validation loss cuts.
BASE = {"model.name": "mlp", "train.max_epochs": 100, "train.early_stopping_patience": 20, "train.monitor": "val/loss"}
# The declared search space (its product is tried; keys are params.yaml keys). Its ranges come from a wider random
# search (a one-off, script not kept: 250 settings, 5-fold CV on train + val, plain-torch loop; no test data), which
# favoured two hidden layers, lr 0.003-0.01, weight decay 0.01-0.1 and batches of 16 over the earlier setting below.
GRID = {
    "model.mlp.hidden_dims": [[64], [256, 128]],
    "model.mlp.dropout": [0.1, 0.5],
    "train.lr": [0.003, 0.01],
    "train.weight_decay": [0.01, 0.1],
    "train.batch_size": [16],
}
# Tried too, for comparison: the setting bench/accuracy_baselines.py used before (chosen on the validation split).
EXTRA = [
    {
        "model.mlp.hidden_dims": [64],
        "model.mlp.dropout": 0.2,
        "train.lr": 0.001,
        "train.weight_decay": 0.01,
        "train.batch_size": 64,
    }
]
LOGREG_C = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
LOGREG_DEFAULT_C = 1.0


def settings_grid(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def label(settings: dict) -> str:
    short = {
        "model.mlp.hidden_dims": "hidden",
        "model.mlp.dropout": "dropout",
        "train.lr": "lr",
        "train.weight_decay": "wd",
        "train.batch_size": "batch",
        "data.tabular.scaling": "scaling",
    }
    return ", ".join(f"{short.get(k, k)} {v}" for k, v in settings.items())


def cv_mlp(
    tmp: Path, dataset: str, prepared: Path, meta: dict, settings: dict, folds: int, seed: int, split_seed: int
) -> dict:
    """The pipeline's k-fold cross-validation of one setting: mean fold val/accuracy and val/loss."""
    from pipeline.training.builders import new_logger
    from pipeline.training.cross_validation import cross_validate

    params = make_params(
        tmp,
        f"{dataset}-cv",
        {
            "data.dataset": dataset,
            "data.seed": split_seed,
            **BASE,
            **settings,
            "train.cv_folds": folds,
            "train.seed": seed,
        },
    )
    parent = new_logger(params, meta, tracking.data_digest(prepared, meta))
    name = "-".join(str(v) for v in settings.values()).replace(" ", "")
    summary = silently(cross_validate, params, prepared, meta, parent, tmp / "cv" / f"{split_seed}-{name}-{seed}")
    parent.experiment.set_terminated(parent.run_id, "FINISHED")
    return {
        "acc": summary["val/accuracy"]["mean"],
        "acc_std": summary["val/accuracy"]["std"],
        "loss": summary["val/loss"]["mean"],
    }


def train_val(prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """train + val in the order cross_validate concatenates them, so that the same fold indices mean the same rows."""
    train, val = (read_split(prepared, name) for name in ("train", "val"))
    return np.concatenate([train["x"], val["x"]]), np.concatenate([train["y"], val["y"]])


def cv_logreg(prepared: Path, folds: int, seed: int) -> dict[float, dict]:
    """LogisticRegression per C on the folds cross_validate uses (StratifiedKFold, shuffled, `train.seed`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.model_selection import cross_validate as sk_cross_validate

    x, y = train_val(prepared)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = {}
    for c in LOGREG_C:
        result = sk_cross_validate(
            LogisticRegression(C=c, max_iter=5000), x, y, cv=splitter, scoring=("accuracy", "neg_log_loss")
        )
        scores[c] = {
            "acc": float(result["test_accuracy"].mean()),
            "acc_std": float(result["test_accuracy"].std()),
            "loss": float(-result["test_neg_log_loss"].mean()),
        }
    return scores


def best(scored: list[tuple]) -> tuple:
    """(key, scores) with the highest mean accuracy; ties to the lower loss, then to the earlier entry."""
    return min(enumerate(scored), key=lambda e: (-round(e[1][1]["acc"], 10), round(e[1][1]["loss"], 10), e[0]))[1]


def select(tmp: Path, dataset: str, folds: int, seed: int, split_seed: int | None = None) -> dict:
    split = {} if split_seed is None else {"data.seed": split_seed}
    params = make_params(tmp, dataset, {"data.dataset": dataset, **split})
    prepared = tmp / f"{dataset}_prepared_{params.data.seed}"
    meta = prepare(params.data, prepared)
    print(
        f"{dataset}, split data.seed {params.data.seed}: splits {meta['split_sizes']}; {folds}-fold "
        f"cross-validation on train + val ({meta['split_sizes']['train'] + meta['split_sizes']['val']} rows), "
        f"fold seed {seed}",
        flush=True,
    )

    logreg = cv_logreg(prepared, folds, seed)
    mlp = []
    candidates = settings_grid(GRID) + EXTRA
    start = time.perf_counter()
    for i, settings in enumerate(candidates, 1):
        t0 = time.perf_counter()
        scores = cv_mlp(tmp, dataset, prepared, meta, settings, folds, seed, params.data.seed)
        mlp.append((settings, scores))
        print(
            f"  [{i:>2}/{len(candidates)}] {label(settings):<58} cv acc {scores['acc']:.4f} ± "
            f"{scores['acc_std']:.4f}, loss {scores['loss']:.4f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return {
        "dataset": dataset,
        "prepared": prepared,
        "meta": meta,
        "mlp": mlp,
        "logreg": logreg,
        "seconds": time.perf_counter() - start,
        "folds": folds,
        "split_seed": params.data.seed,
    }


def print_selection(sel: dict) -> tuple[dict, dict, float]:
    chosen, chosen_scores = best(sel["mlp"])
    c, c_scores = best(sorted(sel["logreg"].items()))
    print(
        f"\nSelection by {sel['folds']}-fold CV on train + val ({sel['seconds']:.0f} s for {len(sel['mlp'])} MLP "
        "settings), top 5 MLP settings and LogisticRegression:"
    )
    header = f"{'model / setting':<70} {'cv acc':>7} {'± std':>7} {'cv loss':>8}"
    print(header)
    print("-" * len(header))
    ranked = sorted(sel["mlp"], key=lambda e: (-e[1]["acc"], e[1]["loss"]))
    for settings, s in ranked[:5]:
        print(f"{'MLP ' + label(settings):<70} {s['acc']:>7.4f} {s['acc_std']:>7.4f} {s['loss']:>8.4f}")
    for value, s in sorted(sel["logreg"].items()):
        print(f"{f'LogisticRegression C={value:g}':<70} {s['acc']:>7.4f} {s['acc_std']:>7.4f} {s['loss']:>8.4f}")
    print(
        f"  chosen MLP: {label(chosen)} (cv acc {chosen_scores['acc']:.4f}); chosen C: {c:g} "
        f"(cv acc {c_scores['acc']:.4f})"
    )
    return chosen, chosen_scores, c


def test(tmp: Path, sel: dict, chosen: dict, c: float, seeds: list[int]) -> dict:
    from sklearn.linear_model import LogisticRegression

    dataset, prepared = sel["dataset"], sel["prepared"]
    train, test_split = (read_split(prepared, name) for name in ("train", "test"))
    baselines = {
        value: LogisticRegression(C=value, max_iter=5000).fit(train["x"], train["y"]).predict(test_split["x"])
        for value in (LOGREG_DEFAULT_C, c)
    }
    runs = []
    for seed in seeds:
        params = make_params(
            tmp,
            dataset,
            {"data.dataset": dataset, "data.seed": sel["split_seed"], **BASE, **chosen, "train.seed": seed},
        )
        out = tmp / f"test_{sel['split_seed']}_{seed}"
        summary, seconds = train_and_evaluate(params, prepared, out)
        _, pred, _ = predict_split(out / "model" / MODEL_FILE, prepared, "test", params.evaluate.batch_size)
        runs.append(
            {"seed": seed, "accuracy": summary["accuracy"], "f1": summary["f1_macro"], "pred": pred, "seconds": seconds}
        )
    return {"y": test_split["y"], "baselines": baselines, "runs": runs, "c": c}


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[int, int, float]:
    """Rows only a gets wrong, rows only b gets wrong, and the exact (binomial) McNemar two-sided p-value."""
    from scipy.stats import binomtest

    only_a, only_b = int(((pred_a != y) & (pred_b == y)).sum()), int(((pred_a == y) & (pred_b != y)).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def print_test(sel: dict, chosen: dict, chosen_cv: dict, result: dict) -> None:
    y, baselines = result["y"], result["baselines"]
    accuracy = {value: float((pred == y).mean()) for value, pred in baselines.items()}
    print(
        f"\n{sel['dataset']}, test split ({len(y)} rows): the CV-chosen MLP ({label(chosen)}) vs LogisticRegression "
        "on the same standardised training split"
    )
    header = (
        f"{'model':<32} {'train.seed':>10} {'test acc':>8} {'errors':>6} {'macro F1':>8} {'fit s':>6} "
        f"{'errors only MLP / only LR(C=1), McNemar p':>42}"
    )
    print(header)
    print("-" * len(header))
    for value, pred in baselines.items():
        name = f"LogisticRegression C={value:g}" + (" (CV)" if value == result["c"] else "")
        print(f"{name:<32} {'-':>10} {accuracy[value]:>8.4f} {int((pred != y).sum()):>6} {'-':>8} {'-':>6}")
    for r in result["runs"]:
        only_mlp, only_lr, p = mcnemar(y, r["pred"], baselines[LOGREG_DEFAULT_C])
        print(
            f"{'MLP (CV-chosen)':<32} {r['seed']:>10} {r['accuracy']:>8.4f} {int((r['pred'] != y).sum()):>6} "
            f"{r['f1']:>8.4f} {r['seconds']:>6.1f} {f'{only_mlp} / {only_lr}, p = {p:.2f}':>42}"
        )
    accs = [r["accuracy"] for r in result["runs"]]
    mean, low = float(np.mean(accs)), min(accs)
    logreg_cv = sel["logreg"]
    print(
        f"  cross-validation on train + val: MLP {chosen_cv['acc']:.4f} vs LogisticRegression C=1 "
        f"{logreg_cv[LOGREG_DEFAULT_C]['acc']:.4f}, C={result['c']:g} {logreg_cv[result['c']]['acc']:.4f}"
    )
    for value in baselines:
        print(
            f"  test: MLP mean {mean:.4f}, min {low:.4f} vs LogisticRegression C={value:g} {accuracy[value]:.4f}: "
            f"goal MLP >= baseline: mean {'met' if mean >= accuracy[value] else 'NOT met'} "
            f"({mean - accuracy[value]:+.4f}), min {'met' if low >= accuracy[value] else 'NOT met'}"
        )


def print_repeated_splits(outcomes: list[tuple[dict, dict, dict]]) -> None:
    """One line per outer split: what CV on its train + val chose and the test accuracies; then the means."""
    print(f"\nNested: selection repeated inside each of {len(outcomes)} train/val/test splits, each tested once")
    header = (
        f"{'data.seed':>9} {'test rows':>9} {'MLP chosen by CV on train + val':<58} {'MLP test':>8} "
        f"{'LR C=1':>7} {'LR C=CV':>7}"
    )
    print(header)
    print("-" * len(header))
    mlp, logreg, logreg_cv = [], [], []
    for sel, chosen, result in outcomes:
        y = result["y"]
        mlp.append(float(np.mean([r["accuracy"] for r in result["runs"]])))
        logreg.append(float((result["baselines"][LOGREG_DEFAULT_C] == y).mean()))
        logreg_cv.append(float((result["baselines"][result["c"]] == y).mean()))
        print(
            f"{sel['split_seed']:>9} {len(y):>9} {label(chosen):<58} {mlp[-1]:>8.4f} {logreg[-1]:>7.4f} "
            f"{logreg_cv[-1]:>7.4f}"
        )
    wins = sum(m > b for m, b in zip(mlp, logreg, strict=True))
    ties = sum(m == b for m, b in zip(mlp, logreg, strict=True))
    print(
        f"  mean test accuracy over the splits: MLP {np.mean(mlp):.4f} ± {np.std(mlp):.4f}, LogisticRegression "
        f"C=1 {np.mean(logreg):.4f} ± {np.std(logreg):.4f}, C by CV {np.mean(logreg_cv):.4f}"
    )
    print(
        f"  MLP vs LogisticRegression C=1 per split: {wins} better, {ties} equal, {len(mlp) - wins - ties} worse; "
        f"goal MLP >= baseline on the mean: {'met' if np.mean(mlp) >= np.mean(logreg) else 'NOT met'} "
        f"({np.mean(mlp) - np.mean(logreg):+.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="breast_cancer", choices=("breast_cancer", "wine", "iris"))
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds on train + val")
    parser.add_argument("--cv-seed", type=int, default=42, help="the folds' shuffle and the CV fits' train.seed")
    parser.add_argument(
        "--test-seeds",
        type=int,
        nargs="+",
        default=[42, 43, 44],
        help="train.seed values of the chosen setting's test runs",
    )
    parser.add_argument("--select-only", action="store_true", help="stop before any test score")
    parser.add_argument(
        "--split-seeds",
        type=int,
        nargs="+",
        help="repeat everything on these train/val/test splits (data.seed values; default: "
        "params.yaml's one split) and summarise the test accuracies over them",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 because these networks are too small to gain from more, and "
        "two threads on a busy 2-core machine made one setting's CV up to 25x slower",
    )
    args = parser.parse_args()
    quiet()
    for noise in (".*was called before the ``update`` method.*", ".*exists and is not empty.*", ".*Add type hints.*"):
        warnings.filterwarnings("ignore", message=noise)
    import torch

    torch.set_num_threads(args.threads)
    print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    start = time.perf_counter()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="tabular_model_selection.") as tmp:
        tmp = Path(tmp)
        os.environ.pop("DVC_ROOT", None)
        os.chdir(tmp)  # MLflow's artifacts go beside the store at the "repository root", here the working directory
        try:
            outcomes = []
            for split_seed in args.split_seeds or [None]:
                sel = select(tmp, args.dataset, args.folds, args.cv_seed, split_seed)
                chosen, chosen_cv, c = print_selection(sel)
                if not args.select_only:
                    result = test(tmp, sel, chosen, c, args.test_seeds)
                    print_test(sel, chosen, chosen_cv, result)
                    outcomes.append((sel, chosen, result))
            if len(outcomes) > 1:
                print_repeated_splits(outcomes)
        finally:
            os.chdir(cwd)
    print(
        f"\n{time.perf_counter() - start:.0f} s in all; load average at end (1/5/15 min): "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
