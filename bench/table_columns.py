"""A table with a date, an ID, a free-text and a few numeric/categorical columns, and an imbalanced label that depends
on the season: prepare + train with params.yaml's defaults (but the data section and `model.name: mlp`), against
LogisticRegression on the same prepared split. No downloads: the table is generated.

    OMP_NUM_THREADS=1 .venv/bin/python bench/table_columns.py [--rows 1500] [--seeds 3]

Prints prepare's feature summary, then per seed the MLP's and LogisticRegression's macro F1 on the test split, and
the MLP's macro F1 with the date column left out; with --before, also with every text column one-hot encoded
(dates and IDs not recognised, as prepare did before).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import baseline_comparison  # bench/, beside this script
import numpy as np
import pandas as pd

SEASONS = ("winter", "spring", "summer", "autumn")


def weather_table(rows: int, seed: int) -> pd.DataFrame:
    """Daily rows from 2019-01-01; the weather class follows the day of year (plus temperature and wind), so the date
    carries most of the signal; classes from ~55% to ~4%."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2019-01-01", periods=rows, freq="D")
    phase = 2 * np.pi * (days.day_of_year.to_numpy() - 1) / 365.25
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
    return pd.DataFrame(
        {
            "record_id": [f"r{i:06d}" for i in rng.permutation(rows)],
            "date": days.strftime("%Y-%m-%d"),
            "station": station,
            "temp": temp.round(1),
            "humidity": humidity.round(1),
            "wind": wind.round(1),
            "observer_note": [f"obs {rng.integers(1_000_000)} {w}" for w in rng.choice(["ok", "late", "n/a"], rows)],
            "weather": label,
        }
    )


def run_pipeline(workdir: Path, csv: Path, drop: list[str] | None, seed: int, **tabular) -> dict:
    data = {
        "dataset": str(csv),
        "kind": "auto",
        "seed": seed,
        "tabular": {"target": "weather", "drop": drop, **tabular},
    }
    return baseline_comparison.run_pipeline(workdir, data, "mlp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--before",
        action="store_true",
        help="also the MLP with every text column one-hot encoded, "
        "date included, as prepare did before dates and IDs were recognised",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "weather.csv"
        frame = weather_table(args.rows, seed=0)
        frame.to_csv(csv, index=False)
        print("label counts:", frame["weather"].value_counts().to_dict())
        print(
            f"{'seed':>4}  {'MLP':>6}  {'LogReg':>6}  {'diff':>7}  {'MLP, no date':>12}"
            f"{'  MLP, all one-hot' if args.before else ''}"
        )
        for seed in range(args.seeds):
            with_date = run_pipeline(Path(tmp) / f"s{seed}", csv, None, seed)
            if seed == 0:
                heads = ("prepare:", "  numeric", "  categorical", "  date", "  left out")
                print("\n".join(line for line in with_date["log"].splitlines() if line.startswith(heads)))
            no_date = run_pipeline(Path(tmp) / f"s{seed}-nodate", csv, ["date"], seed)
            before = ""
            if args.before:
                one_hot = run_pipeline(
                    Path(tmp) / f"s{seed}-before",
                    csv,
                    None,
                    seed,
                    dates=[],
                    categorical=["record_id", "date", "station", "observer_note"],
                )
                before = f"  {one_hot['model']:>16.4f}"
            print(
                f"{seed:>4}  {with_date['model']:.4f}  {with_date['baseline']:.4f}  "
                f"{with_date['model'] - with_date['baseline']:+.4f}  {no_date['model']:>12.4f}{before}",
                flush=True,
            )


if __name__ == "__main__":
    main()
