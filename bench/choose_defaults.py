"""Finds the per-data-kind defaults of pipeline/defaults.py: a small grid per kind, scored on validation data only.

    OMP_NUM_THREADS=1 python bench/choose_defaults.py [--only text|image|tabular] [--sms PATH] [--folds 5]
                                                      [--seeds 42 43 44] [--candidates NAME ...]

Each candidate sets every key that `auto` resolves (model.name, the family's key hyper-parameters, lr, weight
decay, batch size, max_epochs, monitor, class weights), over params.yaml's other values. The stages run in-process
in a temporary folder (prepare, then the pipeline's own `fit` or `cross_validate`, MLflow into a temporary SQLite
store); nothing is written outside it except the result file under bench/results/. The test split is never read.

tabular  breast_cancer, wine, iris and two synthetic tables made here (make_classification, written as CSV with a
         `label` column): k outer folds of train + val; each candidate is trained as the pipeline trains (early
         stopping and the kept epoch judged on a validation part of the other folds) and scored on the held-out
         fold, rows that chose nothing. Score = mean held-out accuracy, ties to the lower mean log loss. The
         evaluate stage's LogisticRegression is scored on the same folds, as a reference (not a candidate).
image    digits and a noisy, shifted digits variant (.npz) made here: score = accuracy on the validation split.
text     the SMS Spam Collection (TSV, no header; its header-CSV form holds the same rows in the same order, so the
         same split: the check script bench/defaults_vs_baseline.py runs both) and a synthetic 3-class message set
         (CSV with a header) made here: score = macro F1 on the validation split.

`--seeds` trains every candidate once per `train.seed` (for tables that seed also draws the folds, the same folds
for every candidate and the reference) and scores it by the mean over seeds; the per-seed scores and their spread
are printed, to tell a difference between candidates from seed noise. `--candidates` runs only the named ones of
the kinds run.

Per kind, candidates are ranked on each data set (1 = best); the winner has the best mean rank, ties to the higher
mean score. Scores equal to 4 decimals tie (then the lower loss ranks first): a smaller difference is less than one
validation row here (a mean over folds of unequal size differs in the 5th decimal for the same number of errors).
The winners are what pipeline/defaults.py holds. `--rerank` prints the tables again from the result file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy_baselines import quiet, silently

from pipeline.config import Params, load_params
from pipeline.stages.prepare import prepare

DEFAULT_SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"
RESULTS = ROOT / "bench" / "results" / "choose_defaults.json"
TIE_DECIMALS = 4
REFERENCE = "LogisticRegression (reference)"  # tables: scored beside the candidates, never one of them

# Every tabular candidate starts from TABLE_COMMON and changes what its name says.
TABLE_COMMON = {
    "model.name": "mlp",
    "model.mlp.hidden_dims": [64],
    "model.mlp.dropout": 0.3,
    "train.lr": 0.01,
    "train.weight_decay": 0.1,
    "train.batch_size": 16,
    "train.max_epochs": 100,
    "train.monitor": "val/loss",
    "train.class_weights": "none",
    "train.ema_decay": 0.0,
}
TABLE_CHANGES = {
    "linear (mlp [])": {"model.mlp.hidden_dims": [], "model.mlp.dropout": 0.0, "train.weight_decay": 0.01},
    "mlp [64] do0.2 lr0.003": {"model.mlp.dropout": 0.2, "train.lr": 0.003, "train.weight_decay": 0.01},
    "mlp [256,128] do0.1 lr0.01": {
        "model.mlp.hidden_dims": [256, 128],
        "model.mlp.dropout": 0.1,
        "train.weight_decay": 0.01,
    },
    # stronger regularisation of the same network, and a small one regularised as strongly
    "mlp [256,128] do0.3 lr0.01 wd0.1": {"model.mlp.hidden_dims": [256, 128]},
    "mlp [64] do0.3 lr0.01 wd0.1": {},
    # the weights averaged over steps (an exponential moving average), at two horizons
    "mlp [64] do0.3 lr0.01 wd0.1 ema0.99": {"train.ema_decay": 0.99},
    "mlp [64] do0.3 lr0.01 wd0.1 ema0.995": {"train.ema_decay": 0.995},
}
CANDIDATES = {
    "tabular": {name: {**TABLE_COMMON, **changes} for name, changes in TABLE_CHANGES.items()},
    "image": {
        "cnn [32,64] lr0.003 val/loss": {
            "model.name": "cnn",
            "model.cnn.channels": [32, 64],
            "train.lr": 0.003,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 40,
            "train.monitor": "val/loss",
            "train.class_weights": "none",
        },
        "cnn [32,64] lr0.003 val/accuracy": {
            "model.name": "cnn",
            "model.cnn.channels": [32, 64],
            "train.lr": 0.003,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 40,
            "train.monitor": "val/accuracy",
            "train.class_weights": "none",
        },
        "mlp [256,128] lr0.003": {
            "model.name": "mlp",
            "model.mlp.hidden_dims": [256, 128],
            "model.mlp.dropout": 0.1,
            "train.lr": 0.003,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 40,
            "train.monitor": "val/loss",
            "train.class_weights": "none",
        },
    },
    "text": {
        "cnn [128] emb128 lr0.002 val/f1": {
            "model.name": "cnn",
            "model.cnn.channels": [128],
            "model.cnn.embedding_dim": 128,
            "train.lr": 0.002,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 15,
            "train.monitor": "val/f1_macro",
            "train.class_weights": "none",
        },
        "cnn [128] emb128 lr0.002 val/f1 balanced": {
            "model.name": "cnn",
            "model.cnn.channels": [128],
            "model.cnn.embedding_dim": 128,
            "train.lr": 0.002,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 15,
            "train.monitor": "val/f1_macro",
            "train.class_weights": "balanced",
        },
        "cnn [128] emb128 lr0.002 val/loss": {
            "model.name": "cnn",
            "model.cnn.channels": [128],
            "model.cnn.embedding_dim": 128,
            "train.lr": 0.002,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 15,
            "train.monitor": "val/loss",
            "train.class_weights": "none",
        },
        "cnn [32,64] emb64 lr0.003 val/loss (old)": {
            "model.name": "cnn",
            "model.cnn.channels": [32, 64],
            "model.cnn.embedding_dim": 64,
            "train.lr": 0.003,
            "train.weight_decay": 1e-4,
            "train.batch_size": 64,
            "train.max_epochs": 40,
            "train.monitor": "val/loss",
            "train.class_weights": "none",
        },
    },
}


# ---------------------------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------------------------
def synthetic_tables(folder: Path) -> dict[str, dict]:
    """Two tables a linear model does not solve alone: one with interacting informative features, one imbalanced
    with a categorical column."""
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=600,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        n_clusters_per_class=2,
        class_sep=1.0,
        random_state=0,
    )
    a = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).assign(label=[f"c{v}" for v in y])
    x, y = make_classification(
        n_samples=800, n_features=8, n_informative=4, n_classes=2, weights=[0.8, 0.2], flip_y=0.02, random_state=1
    )
    b = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    b["colour"] = np.where(x[:, 0] + 0.5 * np.random.default_rng(1).normal(size=len(x)) > 0, "red", "blue")
    b = b.assign(label=[f"c{v}" for v in y])
    sets = {}
    for name, frame in (("synthetic-3class", a), ("synthetic-imbalanced", b)):
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        sets[name] = {"data.dataset": str(path), "data.tabular.target": "label"}
    return sets


def noisy_digits(folder: Path) -> dict[str, dict]:
    """The digits with Gaussian pixel noise and a random one-pixel shift: images that are a little harder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    images = digits.images.copy()
    for i in range(len(images)):
        images[i] = np.roll(images[i], shift=(rng.integers(-1, 2), rng.integers(-1, 2)), axis=(0, 1))
    images = np.clip(images + rng.normal(0, 2.0, images.shape), 0, 16).astype(np.float32)
    path = folder / "noisy_digits.npz"
    np.savez(path, x=images, y=digits.target)
    return {"digits": {"data.dataset": "digits"}, "noisy-digits": {"data.dataset": str(path)}}


def synthetic_text(folder: Path) -> dict:
    """Three topics of short messages with shared filler words and label noise, as a header CSV."""
    import csv

    rng = np.random.default_rng(0)
    filler = "the a to and of in is it you for on with that this at be have are was".split()
    topics = {
        "sport": "match goal team score win league coach player season ball".split(),
        "money": "price bank loan cash offer pay credit account deal save".split(),
        "travel": "flight hotel trip beach ticket train visit city holiday airport".split(),
    }
    names = list(topics)
    path = folder / "synthetic_topics.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "message"])
        for _ in range(1500):
            label = names[rng.integers(3)]
            words = list(rng.choice(filler, rng.integers(6, 14)))
            # two topic words, one of which may come from another topic: not separable by one keyword
            words += [rng.choice(topics[label]), rng.choice(topics[names[rng.integers(3)]])]
            rng.shuffle(words)
            if rng.random() < 0.05:
                label = names[rng.integers(3)]
            writer.writerow([label, " ".join(words)])
    return {
        "data.dataset": str(path),
        "data.kind": "text",
        "data.text.text_column": "message",
        "data.text.label_column": "label",
    }


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------
def make_params(params_file: Path, tmp: Path, experiment: str, settings: dict) -> Params:
    overrides = [f"{key}={value}" for key, value in settings.items()]
    overrides += [
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"mlflow.experiment_name={experiment}",
        "mlflow.run_name=null",
        "trainer.progress_bar=false",
        "mlflow.system_metrics=false",
    ]
    return load_params(params_file, overrides=overrides)


def holdout_folds(params: Params, prepared: Path, folder: Path, folds: int) -> list[Path]:
    """Prepared folders, one per outer fold of train + val: its held-out rows as the `test` split, the other rows
    split again (stratified, params.yaml's validation share) into `train` and the `val` rows that early stopping
    and the best checkpoint are judged on, as the pipeline does. The held-out rows play no part in training or in
    choosing the kept epoch, so their score is what the kept model does on rows it has not seen (a fold score from
    `train.cv_folds` is not: its best checkpoint is chosen on that same fold). The data's own test split is never
    read. The rows are the prepared ones (scaled as prepare fitted on the train split)."""
    import shutil

    from sklearn.model_selection import StratifiedKFold, train_test_split

    from pipeline.artifacts import META_FILE, PREPROCESSOR_FILE, SPLIT_ARRAYS, open_split, split_file

    arrays = {a: np.concatenate([np.array(open_split(prepared, s, a)) for s in ("train", "val")]) for a in SPLIT_ARRAYS}
    y, seed = arrays["y"], params.train.seed
    val_share = params.data.val_fraction / (1 - params.data.test_fraction)
    dirs = []
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (fit_rows, held_out) in enumerate(outer.split(np.zeros(len(y)), y)):
        train, val = train_test_split(fit_rows, test_size=val_share, stratify=y[fit_rows], random_state=seed + k)
        fold = folder / f"fold{k}"
        fold.mkdir(parents=True)
        for name in (META_FILE, PREPROCESSOR_FILE):
            shutil.copy(prepared / name, fold / name)
        for split, rows in (("train", train), ("val", val), ("test", held_out)):
            for name, values in arrays.items():
                np.save(fold / split_file(split, name), values[np.sort(rows)])
        dirs.append(fold)
    return dirs


def score_holdout(params: Params, fold_dirs: list[Path], folder: Path) -> dict:
    """Mean accuracy and log loss on the held-out rows of each outer fold (holdout_folds)."""
    scores = [trained_scores(params, fold, folder / f"fold{k}", "test") for k, fold in enumerate(fold_dirs)]
    accuracies = [s["accuracy"] for s in scores]
    return {
        "score": float(np.mean(accuracies)),
        "loss": float(np.mean([s["loss"] for s in scores])),
        "folds": accuracies,
    }


def score_baseline(fold_dirs: list[Path]) -> dict:
    """The evaluate stage's LogisticRegression on the same outer folds: the reference a table's MLP must match."""
    from pipeline.evaluation.baseline import fit_and_score

    accuracies = [fit_and_score(fold).scores["accuracy"] for fold in fold_dirs]  # type: ignore[union-attr]
    return {"score": float(np.mean(accuracies)), "folds": accuracies}


def trained_scores(params: Params, prepared: Path, folder: Path, split: str) -> dict:
    """Train as the pipeline does (on `train`, the kept epoch judged on `val`), then accuracy, macro F1 and log loss
    on `split`."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from pipeline.stages.evaluate import predict_split
    from pipeline.stages.train import MODEL_FILE, fit

    silently(fit, params, prepared, folder / "model", folder / "checkpoints")
    y, pred, proba = predict_split(folder / "model" / MODEL_FILE, prepared, split, params.evaluate.batch_size)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "f1_macro": float(f1_score(y, pred, average="macro")),
        "loss": float(log_loss(y, proba, labels=range(proba.shape[1]))),
    }


def score_val(params: Params, prepared: Path, folder: Path, metric: str) -> dict:
    scores = trained_scores(params, prepared, folder, "val")
    return {"score": scores[metric], **scores}


def run_kind(
    kind: str, datasets: dict[str, dict], params_file: Path, tmp: Path, folds: int, seeds: list[int], only: set[str]
) -> dict:
    """{data set: {candidate: {score, loss (means over seeds), seeds: {seed: result}}}}, seeds in the outer loop:
    a run cut short still has every candidate on the same seeds."""
    prepared: dict[str, tuple[Path, dict]] = {}
    for data_name, data in datasets.items():
        folder = tmp / f"prepared-{data_name}"
        meta = silently(prepare, make_params(params_file, tmp, kind, data).data, folder)
        prepared[data_name] = (folder, meta)
        print(f"{kind}: {data_name} {meta['split_sizes']}", flush=True)
    candidates = {name: c for name, c in CANDIDATES[kind].items() if not only or name in only}
    results: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        for data_name, data in datasets.items():
            folder_prepared, meta = prepared[data_name]
            fold_dirs: list[Path] = []
            if kind == "tabular":
                seed_params = make_params(params_file, tmp, kind, {**data, "train.seed": seed})
                fold_dirs = holdout_folds(seed_params, folder_prepared, tmp / f"folds-{data_name}-{seed}", folds)
                reference = score_baseline(fold_dirs)
                entry = results.setdefault(data_name, {}).setdefault(REFERENCE, {"seeds": {}})
                entry["seeds"][str(seed)] = reference
                entry["score"] = float(np.mean([r["score"] for r in entry["seeds"].values()]))
                print(f"  seed {seed} {data_name:<20} {REFERENCE:<36} score {reference['score']:.4f}", flush=True)
            for cand, settings in candidates.items():
                folder = tmp / f"{data_name}-{seed}-{len(results.get(data_name, {}))}"
                params = make_params(params_file, tmp, f"{kind}-{data_name}", {**data, **settings, "train.seed": seed})
                start = time.perf_counter()
                if kind == "tabular":
                    result = score_holdout(params, fold_dirs, folder)
                else:
                    result = score_val(params, folder_prepared, folder, "f1_macro" if kind == "text" else "accuracy")
                result["seconds"] = time.perf_counter() - start
                entry = results.setdefault(data_name, {}).setdefault(cand, {"seeds": {}})
                entry["seeds"][str(seed)] = result
                entry["score"] = float(np.mean([r["score"] for r in entry["seeds"].values()]))
                entry["loss"] = float(np.mean([r["loss"] for r in entry["seeds"].values()]))
                print(
                    f"  seed {seed} {data_name:<20} {cand:<36} score {result['score']:.4f}  "
                    f"val/loss {result['loss']:.4f}  {result['seconds']:.0f} s",
                    flush=True,
                )
    return results


def rank(results: dict[str, dict[str, dict]]) -> list[tuple[str, float, float]]:
    """(candidate, mean rank, mean score), best first. Rank per data set by score, ties to the lower loss; equal
    (score, loss) share the mean of their ranks."""
    candidates = [c for c in next(iter(results.values())) if c != REFERENCE]
    ranks: dict[str, list[float]] = {c: [] for c in candidates}
    for scores in results.values():
        keys = {c: (-round(scores[c]["score"], TIE_DECIMALS), round(scores[c]["loss"], 6)) for c in candidates}
        ordered = sorted(candidates, key=lambda c: keys[c])
        for c in candidates:
            positions = [i + 1 for i, other in enumerate(ordered) if keys[other] == keys[c]]
            ranks[c].append(sum(positions) / len(positions))
    table = [
        (c, float(np.mean(ranks[c])), float(np.mean([results[d][c]["score"] for d in results]))) for c in candidates
    ]
    return sorted(table, key=lambda row: (row[1], -row[2]))


def print_kind(kind: str, results: dict[str, dict[str, dict]]) -> str:
    names = list(results)
    header = f"{'candidate':<44} " + " ".join(f"{n[:16]:>16}" for n in names) + f" {'mean rank':>9} {'mean':>7}"
    print(
        f"\n{kind}: "
        + (
            "mean accuracy on the held-out rows of k outer folds of train + val"
            if kind == "tabular"
            else "val macro F1"
            if kind == "text"
            else "val accuracy"
        )
    )
    print(header)
    print("-" * len(header))
    table = rank(results)
    for cand, mean_rank, mean_score in table:
        print(
            f"{cand:<44} "
            + " ".join(f"{results[n][cand]['score']:>16.4f}" for n in names)
            + f" {mean_rank:>9.2f} {mean_score:>7.4f}"
        )
    if REFERENCE in results[names[0]]:
        print(f"{REFERENCE:<44} " + " ".join(f"{results[n][REFERENCE]['score']:>16.4f}" for n in names))
    print(f"winner: {table[0][0]}")
    seeds = sorted({seed for n in names for seed in results[n][table[0][0]].get("seeds", {})})
    if len(seeds) > 1:
        print(f"per seed ({', '.join(seeds)}), and the standard deviation over seeds:")
        references = [(REFERENCE, 0, 0)] if REFERENCE in results[names[0]] else []
        for cand, _, _ in [*table, *references]:
            per_seed = [
                " ".join(f"{results[n][cand]['seeds'][seed]['score']:.4f}" for seed in seeds)
                + f" ±{np.std([results[n][cand]['seeds'][seed]['score'] for seed in seeds]):.4f}"
                for n in names
            ]
            print(f"  {cand:<42} " + " | ".join(per_seed))
    return table[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(CANDIDATES), action="append")
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed values (default: params.yaml's)")
    parser.add_argument("--candidates", nargs="+", default=[], help="run only these candidates (names as printed)")
    parser.add_argument("--rerank", action="store_true", help="only print the tables of the result file")
    args = parser.parse_args()
    if args.rerank:
        for kind, saved in json.loads(RESULTS.read_text()).items():
            print_kind(kind, saved["results"])
        return
    quiet()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="choose-defaults-") as name:
        tmp = Path(name)
        params_file = tmp / "params.yaml"  # a snapshot: the grid does not see edits made while it runs
        params_file.write_text((ROOT / "params.yaml").read_text())
        datasets = {
            "tabular": {**{d: {"data.dataset": d} for d in ("breast_cancer", "wine", "iris")}, **synthetic_tables(tmp)},
            "image": noisy_digits(tmp),
            "text": {
                "sms": {"data.dataset": str(args.sms), "data.kind": "text"},
                "synthetic-topics": synthetic_text(tmp),
            },
        }
        all_results, winners = {}, {}
        for kind in args.only or ["text", "image", "tabular"]:
            seeds = args.seeds or [load_params(params_file).train.seed]
            only = set(args.candidates)
            all_results[kind] = run_kind(kind, datasets[kind], params_file, tmp, args.folds, seeds, only)
            winners[kind] = print_kind(kind, all_results[kind])
    print(f"\n{time.perf_counter() - start:.0f} s in all; winners: {winners}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    previous.update(
        {
            kind: {"results": all_results[kind], "winner": winners[kind], "settings": CANDIDATES[kind][winners[kind]]}
            for kind in winners
        }
    )
    RESULTS.write_text(json.dumps(previous, indent=1))


if __name__ == "__main__":
    main()
