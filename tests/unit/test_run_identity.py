"""What a run is called and which params it logs (pipeline/config.py `used_params`, pipeline/tracking.py names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.config import PARAMS_FILE, config_hash, load_params, to_flat_dict, used_params
from tests.helpers import REPO

MAX_LOGGED_PARAMS = 40


def test_default_run_logs_only_the_sections_it_uses() -> None:
    params = load_params(REPO / PARAMS_FILE)
    used = used_params(params, "image")
    assert len(used) <= MAX_LOGGED_PARAMS
    assert "model.cnn.channels" in used and "data.image.color" in used and "train.lr" in used
    assert not [
        k
        for k in used
        if k.startswith(
            ("model.mlp.", "model.rnn.", "model.transformer.", "data.text.", "data.tabular.", "evaluate.", "mlflow.")
        )
    ]
    assert "model.cnn.embedding_dim" not in used  # embeds tokens: images have none
    # adamw with cosine: no momentum (sgd), step_size/gamma (step), plateau_patience (plateau); min_lr is cosine's.
    assert not {"train.momentum", "train.step_size", "train.gamma", "train.plateau_patience"} & set(used)
    assert "train.min_lr" in used


def test_chosen_optimizer_and_scheduler_bring_their_options() -> None:
    params = load_params(
        REPO / PARAMS_FILE, ["train.optimizer=sgd", "train.scheduler=step", "train.step_size=5", "model.name=mlp"]
    )
    used = used_params(params, "tabular")
    assert {"train.momentum", "train.step_size", "train.gamma", "model.mlp.embedding_dim"} <= set(used)
    assert not {"train.min_lr", "train.plateau_patience"} & set(used)
    assert not [k for k in used if k.startswith(("model.cnn.", "data.image."))]


def test_config_hash_follows_the_content() -> None:
    a = load_params(REPO / PARAMS_FILE)
    assert config_hash(a) == config_hash(load_params(REPO / PARAMS_FILE))
    assert config_hash(a) != config_hash(load_params(REPO / PARAMS_FILE, ["train.lr=0.01"]))
    assert len(config_hash(a)) == 16


def test_run_name_is_the_model_and_what_differs_from_the_committed_params(
    committed_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracking.run_name(load_params(), "image") == "cnn"
    changed = load_params(PARAMS_FILE, ["train.lr=0.01", "train.batch_size=32", "trainer.progress_bar=false"])
    # In params.yaml order; display-only keys do not count.
    assert tracking.run_name(changed, "image") == "cnn bs=32 lr=0.01"
    # Another model: its own section compared with the committed one, not listed as a whole.
    assert tracking.run_name(load_params(PARAMS_FILE, ["model.name=mlp"]), "image") == "mlp"
    assert (
        tracking.run_name(load_params(PARAMS_FILE, ["model.name=mlp", "model.mlp.hidden_dims=[64]"]), "image")
        == "mlp hidden_dims=64"
    )
    monkeypatch.setenv("DVC_EXP_NAME", "tawny-mope")
    assert tracking.run_name(changed, "image") == "tawny-mope cnn bs=32 lr=0.01"
    assert tracking.run_name(load_params(PARAMS_FILE, ["mlflow.run_name=mine"]), "image") == "mine"


def test_run_name_names_a_clash_of_short_names_in_full(committed_repo: Path) -> None:
    params = load_params(PARAMS_FILE, ["data.seed=1", "train.seed=2"])
    assert tracking.run_name(params, "image") == "cnn data.seed=1 train.seed=2"


def test_run_name_outside_git_compares_with_the_schema_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / PARAMS_FILE).write_text("train:\n  lr: 0.05\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # not inside any repository
    params = load_params()
    assert tracking.run_name(params, "image") == "cnn lr=0.05"
    assert to_flat_dict(params)["train.lr"] == 0.05


def test_an_experiment_created_by_another_worker_meanwhile_is_used(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on a shared store (PostgreSQL, a server: no file lock) both find no experiment, both create it;
    the second gets RESOURCE_ALREADY_EXISTS and must use the first one's, not fail."""
    from mlflow.tracking import MlflowClient

    existing = MlflowClient(mlflow_store).create_experiment("shared")
    lookups = iter([None])  # the first lookup runs before the other worker's create landed
    real_lookup = MlflowClient.get_experiment_by_name
    monkeypatch.setattr(
        MlflowClient, "get_experiment_by_name", lambda self, name: next(lookups, real_lookup(self, name))
    )
    tracking.ensure_store(mlflow_store, "shared")
    assert MlflowClient(mlflow_store).get_experiment_by_name("shared").experiment_id == existing
