"""Table columns as a data scientist would treat them: dates become calendar features, ID-like and (with one-hot)
high-cardinality text columns are left out and named, `data.tabular.drop` removes columns, and prepare's feature
summary says all of it. The prediction path must apply the same expansion to raw rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataParams, ModelParams, TabularParams
from pipeline.data import DataError
from pipeline.data.tabular import CALENDAR, plan_columns, with_calendar_features
from pipeline.stages.prepare import prepare
from tests.helpers import REPO, run, sqlite_uri, stage_command


def table(n: int = 240, seed: int = 0, date_format: str = "%Y-%m-%d") -> pd.DataFrame:
    """A date (the label follows its month), an ID, a free-text note, a small categorical and a number."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2020-01-01", periods=n, freq="3D")
    return pd.DataFrame(
        {
            "id": rng.permutation(n) + 1000,  # integers, one per row, named like an ID
            "ticket": [f"T-{i:05d}" for i in rng.permutation(n)],
            "day": days.strftime(date_format),
            "note": [f"called at {rng.integers(10**6)}" for _ in range(n)],
            "colour": rng.choice(["red", "green", "blue"], n),
            "size": rng.normal(size=n).round(3),
            "label": np.where(np.isin(days.month, [6, 7, 8]), "summer", "other"),
        }
    )


def prepared(tmp_path: Path, frame: pd.DataFrame, **tabular) -> dict:
    frame.to_csv(tmp_path / "t.csv", index=False)
    return prepare(
        DataParams(dataset=str(tmp_path / "t.csv"), tabular=TabularParams(target="label", **tabular)),
        tmp_path / "prepared",
    )


def test_dates_ids_and_free_text_are_handled_and_summarised(tmp_path: Path) -> None:
    meta = prepared(tmp_path, table())
    summary = meta["feature_summary"]
    assert summary["dates"] == {"day": "ISO8601"}
    assert summary["numeric"] == ["size"] and summary["categorical"] == {"colour": 3}
    assert set(summary["dropped"]) == {"id", "ticket", "note"}
    assert "ID" in summary["dropped"]["ticket"] and "ID" in summary["dropped"]["id"]
    assert [n for n in meta["feature_names"] if "day" in n] == [f"numeric__day_{f}" for f in CALENDAR]
    assert summary["model_inputs"] == len(meta["feature_names"]) == 1 + 7 + 3
    assert meta["preprocessing"]["columns"] == ["id", "ticket", "day", "note", "colour", "size"]


def test_calendar_features_are_cyclic_and_missing_dates_stay_missing() -> None:
    frame = pd.DataFrame({"d": ["2024-01-01", "2024-12-31", None, "not a date"]})
    out = with_calendar_features(frame, {"d": "ISO8601"})
    assert out["d_year"].tolist()[:2] == [2024, 2024]
    # 2024-01-01 is a Monday (day of week 0), the first day of January and of the year: angle 0.
    for unit in ("month", "dayofweek", "dayofyear"):
        assert out[f"d_{unit}_sin"][0] == pytest.approx(0) and out[f"d_{unit}_cos"][0] == pytest.approx(1)
    # The year's last day lies next to its first on the circle.
    assert out["d_dayofyear_cos"][1] > 0.999
    assert out.iloc[2:][[f"d_{f}" for f in CALENDAR]].isna().all().all()


@pytest.mark.parametrize("date_format", ["%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%Y-%m-%dT%H:%M:%S"])
def test_common_date_formats_are_detected(date_format: str) -> None:
    frame = table(date_format=date_format)[["day", "size"]]
    plan = plan_columns(frame, TabularParams())
    assert list(plan.dates) == ["day"]
    parsed = pd.to_datetime(frame["day"], format=date_format)
    out = with_calendar_features(frame, plan.dates)
    assert out["day_year"].tolist() == parsed.dt.year.tolist()


def test_month_names_and_codes_with_digits_stay_categories() -> None:
    frame = pd.DataFrame({"month": ["May", "June", "July"] * 10, "code": ["A1", "B2", "C3"] * 10})
    plan = plan_columns(frame, TabularParams())
    assert plan.dates == {} and plan.categorical == {"month": 3, "code": 3}


def test_high_cardinality_is_left_out_for_onehot_and_kept_for_embedding() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"city": rng.choice([f"city{i}" for i in range(60)], 400), "x": rng.normal(size=400)})
    onehot = plan_columns(frame, TabularParams(max_categories=50))
    assert "max_categories" in onehot.dropped["city"]
    assert plan_columns(frame, TabularParams(max_categories=50, categorical_encoding="embedding")).categorical == {
        "city": 60
    }
    assert plan_columns(frame, TabularParams(max_categories=100)).categorical == {"city": 60}


def test_the_users_lists_win(tmp_path: Path) -> None:
    frame = table()
    # Listed as categorical, the ticket is kept; listed in drop, the size and the note go (without a warning).
    meta = prepared(tmp_path, frame, categorical=["ticket", "colour"], drop=["size", "note"])
    summary = meta["feature_summary"]
    assert set(summary["categorical"]) == {"ticket", "colour"} and summary["dates"] == {"day": "ISO8601"}
    assert summary["dropped"] == {
        "size": "data.tabular.drop",
        "note": "data.tabular.drop",
        "id": "an ID: named so, one integer per row",
    }
    assert "size" not in meta["preprocessing"]["columns"]  # a dropped column is not needed to predict
    # dates: [] turns detection off: the day is then text, one value per row.
    summary = prepared(tmp_path, frame, dates=[])["feature_summary"]
    assert summary["dates"] == {} and "ID or free text" in summary["dropped"]["day"]


def test_bad_column_lists_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape("weight named in data.tabular")):
        prepared(tmp_path, table(), drop=["weight"])
    with pytest.raises(DataError, match=re.escape("data.tabular.dates names 'colour'")):
        prepared(tmp_path, table(), dates=["colour"])
    with pytest.raises(DataError, match="holds numbers"):
        prepared(tmp_path, table(), dates=["size"])


def test_prepare_prints_the_summary_and_warns_naming_the_left_out_columns(tmp_path: Path) -> None:
    import yaml

    table().to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "t.csv", "tabular": {"target": "label"}}})
    )
    done = run(stage_command("prepare", "--out", "prepared"), tmp_path, PYTHONPATH=str(REPO))
    assert "  date         day (ISO8601)" in done.stdout
    assert "  left out     ticket: an ID" in done.stdout
    assert "warning: left out of the features: id, ticket, note" in done.stderr


@pytest.mark.slow
def test_predict_on_raw_rows_with_dates_equals_evaluate(tmp_path: Path) -> None:
    from pipeline.stages.evaluate import predict_split
    from pipeline.stages.predict import predict
    from pipeline.stages.train import MODEL_FILE
    from tests.helpers import split_index, train_tiny

    root = tmp_path / "tabular"
    root.mkdir()
    frame = table()
    frame.to_csv(root / "t.csv", index=False)
    data = DataParams(dataset=str(root / "t.csv"), tabular=TabularParams(target="label"))
    prepared_dir, model_dir = train_tiny(root, data, ModelParams(name="mlp"), max_epochs=2)
    frame.iloc[split_index(prepared_dir)].drop(columns="label").to_csv(root / "rows.csv", index=False)
    _, y_pred, _ = predict_split(model_dir / MODEL_FILE, prepared_dir, "test", 256)
    got = predict(root / "rows.csv", prepared_dir, model_dir)
    assert got["predicted"].tolist() == [["other", "summer"][i] for i in y_pred]

    # evaluate records the feature summary in the run, beside the baseline.
    from mlflow import MlflowClient

    from pipeline.stages.evaluate import evaluate

    uri = sqlite_uri(root.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("DVC_ROOT", raising=False)
        evaluate(prepared_dir, model_dir, root / "eval", 256, uri)
    run_id = json.loads((model_dir / "mlflow_run.json").read_text())["run_id"]
    logged = MlflowClient(uri).download_artifacts(run_id, "data/feature_summary.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["dates"] == {"day": "ISO8601"}
