"""`model.name: auto` and the auto keys: resolved per data kind when params are loaded; an explicit value wins."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.config import PARAMS_FILE, ParamsError, load_params, params_from_dict, to_flat_dict
from pipeline.defaults import AUTO_KEYS, BY_KIND, describe
from pipeline.stages.prepare import prepare
from pipeline.stages.train import apply_defaults, fit
from pipeline.training import checkpoints
from pipeline.training.builders import AUTO_KEYS_TAG, DEFAULTS_KIND_TAG
from tests.helpers import REPO

KIND_DATA = {
    "image": {"dataset": "digits"},
    "tabular": {"dataset": "iris"},
    "text": {"dataset": "data/raw/messages.tsv", "kind": "text"},
}


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    path = tmp_path / PARAMS_FILE
    path.write_text((REPO / PARAMS_FILE).read_text())
    return path


@pytest.mark.parametrize("kind", list(KIND_DATA))
def test_params_yaml_resolves_to_the_table_of_the_data_kind(params_copy: Path, kind: str) -> None:
    overrides = [f"data.{key}={value}" for key, value in KIND_DATA[kind].items()]
    params = load_params(params_copy, overrides)
    flat = to_flat_dict(params)
    assert params.defaults_kind == kind
    assert set(params.auto_keys) == set(AUTO_KEYS)  # params.yaml leaves every one of them auto
    for key, value in BY_KIND[kind].items():
        assert flat[key] == value, key
    assert all(flat[key] is not None for key in AUTO_KEYS)


def test_each_kind_takes_a_candidate_of_the_grid_that_chose_it() -> None:
    """pipeline/defaults.py holds winners of bench/choose_defaults.py: a value edited in one only is caught."""
    spec = importlib.util.spec_from_file_location("choose_defaults", REPO / "bench" / "choose_defaults.py")
    assert spec and spec.loader
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    for kind, table in BY_KIND.items():
        assert table in grid.CANDIDATES[kind].values(), kind


def test_a_key_left_out_of_params_yaml_is_auto_too() -> None:
    params = params_from_dict({"data": {"dataset": "wine"}})
    assert params.model.name == "mlp" and params.train.lr == BY_KIND["tabular"]["train.lr"]
    assert "train.lr" in params.auto_keys


def test_an_explicit_value_in_params_yaml_wins(params_copy: Path) -> None:
    raw = yaml.safe_load(params_copy.read_text())
    raw["data"]["dataset"] = "iris"
    raw["model"]["name"] = "mlp"
    raw["train"]["lr"] = 0.05
    raw["model"]["mlp"]["hidden_dims"] = []  # a linear model
    params_copy.write_text(yaml.safe_dump(raw))
    params = load_params(params_copy)
    assert params.train.lr == 0.05 and params.model.mlp.hidden_dims == []
    assert "train.lr" not in params.auto_keys and "model.name" not in params.auto_keys
    assert "model.mlp.hidden_dims" not in params.auto_keys
    assert params.train.max_epochs == BY_KIND["tabular"]["train.max_epochs"]  # the others still auto


def test_an_override_wins_and_null_or_auto_brings_the_default_back(params_copy: Path) -> None:
    params = load_params(params_copy, ["data.dataset=iris", "model.name=cnn", "train.monitor=val/accuracy"])
    assert params.model.name == "cnn" and params.train.monitor == "val/accuracy"
    assert "model.name" not in params.auto_keys and "train.monitor" not in params.auto_keys
    back = load_params(params_copy, ["data.dataset=iris", "model.name=auto", "train.monitor=null"])
    assert back.model.name == "mlp" and back.train.monitor == BY_KIND["tabular"]["train.monitor"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.name=resnet"], "model.name: 'resnet' is not one of auto, mlp, cnn, rnn, transformer."),
        (["model.name=autoo"], "Did you mean 'auto'?"),
        (["train.monitor=val/acc"], "train.monitor: 'val/acc' is not one of"),
        (["train.lr=auto"], "train.lr: 'auto' is not a number"),
        (["train.class_weights=balance"], "Did you mean 'balanced'?"),
        (["model.mlp.hidden_dims=[8,0]"], "model.mlp.hidden_dims: every size must be > 0"),
    ],
)
def test_the_schema_refuses_a_bad_value_of_an_auto_key(params_copy: Path, overrides: list[str], fragment: str) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_copy, overrides)
    assert fragment in str(info.value)


def test_the_summary_line_names_the_choice_and_the_values() -> None:
    params = params_from_dict({"data": {"dataset": "x.csv", "kind": "text"}, "train": {"lr": 0.01}})
    line = describe(params, params.defaults_kind, params.auto_keys)
    assert line.startswith("model.name auto -> cnn (text defaults: channels [128], embedding_dim 128, ")
    assert "monitor val/f1_macro" in line and "lr " not in line  # lr was written: not a default
    assert "hidden_dims" not in line  # the MLP's section is not used by this run


def test_resolved_values_are_fingerprinted_like_written_ones(params_copy: Path) -> None:
    auto = load_params(params_copy, ["data.dataset=iris"])
    written = load_params(
        params_copy,
        [
            "data.dataset=iris",
            "model.name=mlp",
            *(f"{k}={v}" for k, v in BY_KIND["tabular"].items() if k != "model.name"),
        ],
    )
    assert written.auto_keys != auto.auto_keys
    assert checkpoints.fingerprint(auto, "d") == checkpoints.fingerprint(written, "d")
    assert checkpoints.fingerprint(auto, "d") != checkpoints.fingerprint(load_params(params_copy), "d")


def test_run_name_does_not_list_keys_left_auto_on_both_sides(committed_repo: Path):
    # lr, batch size, epochs... differ from digits' but were left auto on both sides: not what the user changed.
    assert tracking.run_name(load_params(PARAMS_FILE, ["data.dataset=iris"]), "tabular") == "mlp dataset=iris"
    assert (
        tracking.run_name(load_params(PARAMS_FILE, ["data.dataset=iris", "train.lr=0.05"]), "tabular")
        == "mlp dataset=iris lr=0.05"
    )


def test_train_refuses_prepared_data_of_another_kind(params_copy: Path) -> None:
    params = load_params(params_copy)  # digits: image defaults
    with pytest.raises(
        ParamsError,
        match=re.escape("the prepared data is tabular data, but params.yaml's data section describes image data"),
    ):
        apply_defaults(params, "tabular")


def test_train_prints_and_logs_the_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, mlflow_store: str
) -> None:
    uri = mlflow_store
    params = params_from_dict(
        {
            "data": {"dataset": "iris"},
            "train": {"max_epochs": 2},
            "trainer": {"progress_bar": False},
            "mlflow": {"tracking_uri": uri, "experiment_name": "auto", "system_metrics": False},
        }
    )
    prepare(params.data, tmp_path / "prepared")
    run_id = fit(params, tmp_path / "prepared", tmp_path / "model", tmp_path / "ckpt")

    assert (
        "train: model.name auto -> mlp (tabular defaults: hidden_dims [64], dropout 0.3, batch_size 16, "
        "lr 0.01, weight_decay 0.1, monitor val/loss, class_weights none, ema_decay 0.995)" in capsys.readouterr().out
    )
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags[DEFAULTS_KIND_TAG] == "tabular"
    assert set(run.data.tags[AUTO_KEYS_TAG].split(",")) == set(AUTO_KEYS) - {"train.max_epochs"}
    # The resolved values are the run's params.
    assert run.data.params["model.name"] == "mlp" and run.data.params["train.lr"] == "0.01"
    assert run.data.params["model.mlp.hidden_dims"] == "[64]"
    assert run.data.params["train.max_epochs"] == "2"
