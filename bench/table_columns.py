"""A table with a date, an ID, a free-text and a few numeric/categorical columns, and an imbalanced label that depends
on the season: prepare + train with params.yaml's defaults (but the data section and `model.name: mlp`), against
LogisticRegression on the same prepared split. No downloads: the table is generated.

    OMP_NUM_THREADS=1 .venv/bin/python bench/table_columns.py [--rows 1500] [--seeds 3]

Prints prepare's feature summary, then per seed the MLP's and LogisticRegression's macro F1 on the test split, and
the MLP's macro F1 with the date column left out (what one-hot encoding it amounted to before: every test day unseen).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SEASONS = ("winter", "spring", "summer", "autumn")


def weather_table(rows: int, seed: int) -> pd.DataFrame:
    """Daily rows from 2019-01-01; the weather class follows the day of year (plus temperature and wind), so the date
    carries most of the signal; classes from ~55% to ~4%."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2019-01-01", periods=rows, freq="D")
    phase = 2 * np.pi * (days.dayofyear.to_numpy() - 1) / 365.25
    temp = 12 - 10 * np.cos(phase) + rng.normal(0, 4, rows)  # coldest early January
    humidity = 70 + 10 * np.cos(phase) + rng.normal(0, 8, rows)
    wind = rng.gamma(2.0, 3.0, rows)
    station = rng.choice(["north", "south", "east", "west", "hill"], size=rows)
    season = np.array(SEASONS)[((days.month.to_numpy() % 12) // 3)]
    label = np.full(rows, "dry", dtype=object)
    u = rng.random(rows)
    label[(season == "autumn") & (u < 0.55)] = "rain"
    label[(season == "spring") & (u < 0.35)] = "rain"
    label[(season == "autumn") & (days.month.to_numpy() == 11) & (u > 0.8)] = "fog"
    label[(season == "winter") & (temp < 6) & (u < 0.6)] = "snow"
    label[wind > 14] = "storm"
    return pd.DataFrame({
        "record_id": [f"r{i:06d}" for i in rng.permutation(rows)],
        "date": days.strftime("%Y-%m-%d"),
        "station": station,
        "temp": temp.round(1), "humidity": humidity.round(1), "wind": wind.round(1),
        "observer_note": [f"obs {rng.integers(1_000_000)} {w}" for w in rng.choice(["ok", "late", "n/a"], rows)],
        "weather": label,
    })


def run_pipeline(workdir: Path, csv: Path, drop: list[str] | None, seed: int) -> dict:
    """prepare + train + evaluate as the stages run, in a scratch folder with its own MLflow store."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"dataset": str(csv), "kind": "auto", "seed": seed})
    params["data"]["tabular"].update({"target": "weather", "drop": drop})
    params["model"]["name"] = "mlp"
    params["trainer"]["progress_bar"] = False
    params["mlflow"].update({"tracking_uri": f"sqlite:///{workdir}/mlflow.db", "experiment_name": "bench"})
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    out = ""
    for stage in (["pipeline.prepare", "--out", "prepared"],
                  ["pipeline.train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt",
                   "--history", "history.csv", "--cv-metrics", "cv.json"],
                  ["pipeline.evaluate", "--prepared", "prepared", "--model", "model", "--out", "eval"]):
        done = subprocess.run([sys.executable, "-m", *stage], cwd=workdir, env=env, capture_output=True, text=True)
        out += done.stdout + done.stderr
        if done.returncode:
            raise SystemExit(f"{stage[0]} failed:\n{out[-3000:]}")
    import json

    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    baseline = json.loads((workdir / "eval" / "baseline.json").read_text())
    return {"log": out, "model": metrics["macro"]["f1"], "baseline": baseline["f1_macro"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "weather.csv"
        frame = weather_table(args.rows, seed=0)
        frame.to_csv(csv, index=False)
        print("label counts:", frame["weather"].value_counts().to_dict())
        print(f"{'seed':>4}  {'MLP':>6}  {'LogReg':>6}  {'diff':>7}  {'MLP, no date':>12}")
        for seed in range(args.seeds):
            with_date = run_pipeline(Path(tmp) / f"s{seed}", csv, None, seed)
            if seed == 0:
                print("\n".join(line for line in with_date["log"].splitlines() if line.startswith(("prepare", "  "))))
            no_date = run_pipeline(Path(tmp) / f"s{seed}-nodate", csv, ["date"], seed)
            print(f"{seed:>4}  {with_date['model']:.4f}  {with_date['baseline']:.4f}  "
                  f"{with_date['model'] - with_date['baseline']:+.4f}  {no_date['model']:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
