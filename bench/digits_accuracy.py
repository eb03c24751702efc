"""Test accuracy of the default pipeline (params.yaml as committed) on the digits, against scikit-learn's SVC.

    python bench/digits_accuracy.py [--seeds 42 43 44]

Runs the real stages in-process in a temporary folder: prepare (the split from params.yaml's `data`), train (`fit`,
with MLflow logging into a temporary store) and evaluate. The baseline is an RBF SVC (scikit-learn defaults) on the
same training split, scored on the same test split. Each training seed is one pipeline run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params
from pipeline.data import read_split
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare
from pipeline.stages.train import fit


def svc_baseline(prepared: Path) -> float:
    from sklearn.svm import SVC

    train, test = (read_split(prepared, split) for split in ("train", "test"))
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    return float(SVC().fit(flat(train["x"]), train["y"]).score(flat(test["x"]), test["y"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed values (default: params)")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    params.trainer.progress_bar = False
    seeds = args.seeds or [params.train.seed]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.pop("DVC_ROOT", None)
        params.mlflow.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        prepare(params.data, tmp / "prepared")
        baseline = svc_baseline(tmp / "prepared")
        results = []
        for seed in seeds:
            params.train.seed = seed
            start = time.perf_counter()
            fit(params, tmp / "prepared", tmp / f"model{seed}", tmp / f"ckpt{seed}")
            seconds = time.perf_counter() - start
            summary = evaluate(
                tmp / "prepared",
                tmp / f"model{seed}",
                tmp / f"eval{seed}",
                params.evaluate.batch_size,
                params.mlflow.tracking_uri,
            )
            results.append((seed, summary["accuracy"], summary["f1_macro"], seconds))

    print(
        f"\ndigits, model {params.model.name}, test split of {params.data.test_fraction:.0%} "
        f"(data.seed {params.data.seed})"
    )
    print(f"  SVC (rbf) baseline         accuracy {baseline:.4f}")
    for seed, acc, f1, seconds in results:
        print(
            f"  {params.model.name} train.seed {seed:<6}     accuracy {acc:.4f}  macro F1 {f1:.4f}  "
            f"fit {seconds:.1f} s   vs baseline {acc - baseline:+.4f}"
        )
    accs = [r[1] for r in results]
    print(f"  mean accuracy {np.mean(accs):.4f} (min {min(accs):.4f}) over {len(accs)} seed(s); goal >= 0.985")


if __name__ == "__main__":
    main()
