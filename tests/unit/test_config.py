"""The params.yaml schema (pipeline/config.py): what validates, and what each kind of mistake is told."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import (
    MODEL_NAMES,
    Params,
    ParamsError,
    load_params,
    params_from_dict,
    to_flat_dict,
)
from pipeline.defaults import AUTO_KEYS, AUTO_MODEL
from pipeline.errors import PipelineError
from tests.helpers import REPO, stage_command

REPO_PARAMS = REPO / "params.yaml"


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """A private copy of the repository's params.yaml, so overrides never depend on (or touch) the original."""
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO_PARAMS, path)
    return path


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _problems(message: str) -> list[str]:
    """The '  - ...' lines of a ParamsError message."""
    return [line[4:] for line in message.splitlines() if line.startswith("  - ")]


# ---------------------------------------------------------------------------------------------------------------
# The real params.yaml
# ---------------------------------------------------------------------------------------------------------------
def test_repository_params_yaml_validates_and_keeps_its_values(params_copy: Path) -> None:
    params = load_params(params_copy)

    assert isinstance(params, Params)
    # Every value written in params.yaml comes through to the typed params unchanged.
    raw = OmegaConf.to_container(OmegaConf.load(REPO_PARAMS))
    space = raw["tune"].pop("space")  # one value: a mapping from params.yaml keys to their search ranges
    written = _flatten(raw)
    flat = to_flat_dict(params)
    assert written, "params.yaml is empty"
    for key, value in written.items():
        assert key in flat, f"{key} in params.yaml is not in the schema"
        if key in AUTO_KEYS and value in (None, AUTO_MODEL):  # auto: resolved for the data kind
            assert key in params.auto_keys and flat[key] not in (None, AUTO_MODEL), key
        else:
            assert flat[key] == value, key
    assert flat["tune.space"] == space
    assert params.model.name in MODEL_NAMES


def test_to_flat_dict_uses_dotted_keys_for_every_leaf() -> None:
    params = params_from_dict({"train": {"lr": 0.02}, "model": {"cnn": {"channels": [8, 16]}}})
    flat = to_flat_dict(params)

    assert flat["train.lr"] == 0.02
    assert flat["model.cnn.channels"] == [8, 16]
    assert flat["model.mlp.hidden_dims"] == [256, 128]
    assert flat["trainer.devices"] == 1
    assert flat["mlflow.tracking_uri"] is None
    # Only leaves: no section ever appears as a key of its own.
    assert "train" not in flat and "model" not in flat and "model.cnn" not in flat
    assert all("." in key for key in flat)
    # tune.space is one value, a mapping from params.yaml keys to search ranges.
    assert not any(isinstance(v, dict) for k, v in flat.items() if k != "tune.space")


def test_overrides_are_applied_on_top_of_the_file(params_copy: Path) -> None:
    params = load_params(
        params_copy, overrides=["train.lr=0.5", "model.name=mlp", "model.mlp.hidden_dims=[7]", "trainer.devices=auto"]
    )
    assert params.train.lr == 0.5
    assert params.model.name == "mlp"
    assert params.model.mlp.hidden_dims == [7]
    assert params.trainer.devices == "auto"
    # Untouched values still come from the file.
    assert params.mlflow.experiment_name == OmegaConf.load(REPO_PARAMS).mlflow.experiment_name


# ---------------------------------------------------------------------------------------------------------------
# Unknown keys
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "names", "suggestion"),
    [
        ("trainn.lr=1", "trainn", "'train'"),
        ("train.lrr=1", "train.lrr", "'train.lr'"),
        ("model.cnn.chanels=[1]", "model.cnn.chanels", "'model.cnn.channels'"),
        ("trainer.acelerator=cpu", "trainer.acelerator", "'trainer.accelerator'"),
    ],
)
def test_unknown_key_is_named_with_its_full_path_and_the_closest_valid_key(
    params_copy: Path, override: str, names: str, suggestion: str
) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_copy, overrides=[override])
    message = str(info.value)
    [problem] = _problems(message)
    assert problem.startswith(f"{names}: unknown key.")
    assert f"Did you mean {suggestion}?" in problem
    assert str(params_copy) in message.splitlines()[0]


def test_unknown_key_without_a_close_match_lists_the_valid_keys() -> None:
    with pytest.raises(ParamsError) as info:
        params_from_dict({"train": {"zzzzzz": 1}})
    [problem] = _problems(str(info.value))
    assert problem.startswith("train.zzzzzz: unknown key.")
    assert "Did you mean" not in problem
    assert "Valid keys here: seed, batch_size, max_epochs" in problem


def test_every_unknown_key_is_reported_at_once() -> None:
    with pytest.raises(ParamsError) as info:
        params_from_dict({"train": {"lrr": 1}, "model": {"cnn": {"chanels": [1]}}})
    message = str(info.value)
    assert "(2 problems)" in message.splitlines()[0]
    problems = _problems(message)
    assert [p.split(":")[0] for p in problems] == ["train.lrr", "model.cnn.chanels"]


def test_section_that_is_not_a_mapping() -> None:
    with pytest.raises(ParamsError, match=r"data: expected a section \(a mapping\), got 3"):
        params_from_dict({"data": 3})


# ---------------------------------------------------------------------------------------------------------------
# Wrong types
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key", "value", "expected"),
    [
        ("train.lr=abc", "train.lr", "'abc'", "a number"),
        ("train.max_epochs=2.5", "train.max_epochs", "2.5", "an integer"),
        ("model.cnn.channels=[32,x]", "model.cnn.channels[1]", "'x'", "an integer"),
        ("model.cnn.channels=abc", "model.cnn.channels", "'abc'", "a list of integers"),
        ("trainer.deterministic=maybe", "trainer.deterministic", "'maybe'", "true or false"),
        ("train.step_size=2.5", "train.step_size", "2.5", "an integer"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(
    params_copy: Path, override: str, key: str, value: str, expected: str
) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_copy, overrides=[override])
    [problem] = _problems(str(info.value))
    assert problem.startswith(f"{key}: {value} is not {expected}.")
    assert f"Write {expected}, e.g." in problem


def test_wrong_type_from_a_dict() -> None:
    with pytest.raises(ParamsError) as info:
        params_from_dict({"train": {"lr": "abc"}}, source="my.yaml")
    message = str(info.value)
    assert message.splitlines()[0] == "my.yaml is invalid (1 problem):"
    assert "train.lr: 'abc' is not a number" in message


# ---------------------------------------------------------------------------------------------------------------
# Values out of range or not among the choices
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.optimizer=adm", "train.optimizer: 'adm' is not one of sgd, adam, adamw. Did you mean 'adam'?"),
        ("train.scheduler=cosin", "Did you mean 'cosine'?"),
        ("train.monitor=val/acuracy", "Did you mean 'val/accuracy'?"),
        ("trainer.accelerator=gpuu", "Did you mean 'gpu'?"),
        ("train.lr=-1", "train.lr: must be greater than 0, got -1"),
        ("train.momentum=1", "train.momentum: must be less than 1, got 1"),
        ("train.weight_decay=-0.1", "train.weight_decay: must be at least 0, got -0.1"),
        ("data.test_fraction=0", "data.test_fraction: must be greater than 0"),
    ],
)
def test_bad_value_is_explained(params_copy: Path, override: str, fragment: str) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_copy, overrides=[override])
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Combinations that cannot work
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.scheduler=step"], "train.step_size is not set"),
        (["trainer.devices=0"], "trainer.devices: 0 asks for no device at all"),
        (["trainer.devices=[]"], "trainer.devices: [] asks for no device at all"),
        (["trainer.devices=2"], "trainer.devices > 1 on the CPU needs trainer.strategy 'ddp'"),
        (["trainer.devices=[0,1]"], "trainer.devices > 1 on the CPU needs trainer.strategy 'ddp'"),
        (["trainer.devices=two"], "trainer.devices: 'two' is not valid"),
        (["trainer.precision=16-mixed"], "trainer.precision '16-mixed' needs a GPU"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "leaves no training data"),
        (["data.val_fraction=0.6", "data.test_fraction=0.5"], "leaves no training data"),
        (["model.name=resnet"], "model.name: 'resnet' is not one of auto, mlp, cnn, rnn, transformer."),
        (["model.name=mlpp"], "Did you mean 'mlp'?"),
        (["model.mlp.hidden_dims=[16,0]"], "model.mlp.hidden_dims: every size must be > 0"),
        (["model.cnn.channels=[]"], "model.cnn.channels: needs at least one layer"),
        (["model.cnn.channels=[32,0]"], "model.cnn.channels: needs at least one layer and every size > 0"),
        (["trainer.num_nodes=2"], "trainer.num_nodes > 1 needs a distributed trainer.strategy"),
        (["data.tabular.categorical_encoding=embedding", "trainer.precision=bf16-true"], "round the category indices"),
        (["data.kind=text", "data.text.text_column=message"], "text_column and data.text.label_column go together"),
        (
            ["data.kind=text", "data.text.text_column=message", "data.text.label_column=message"],
            "the label must come from a column of its own",
        ),
    ],
)
def test_impossible_combination_is_rejected(params_copy: Path, overrides: list[str], fragment: str) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(params_copy, overrides=overrides)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.scheduler=step", "train.step_size=5"],
        ["trainer.devices=2", "trainer.strategy=ddp"],
        ["trainer.devices=[0,1]", "trainer.strategy=ddp"],
        ["trainer.devices=auto"],
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=bf16-mixed", "data.tabular.categorical_encoding=embedding"],
        ["trainer.precision=16-mixed", "trainer.accelerator=gpu"],
        ["trainer.num_nodes=2", "trainer.strategy=ddp"],
        ["data.val_fraction=0.4", "data.test_fraction=0.5"],
        ["train.early_stopping_patience=null", "train.gradient_clip_val=1.0"],
    ],
)
def test_possible_combination_is_accepted(params_copy: Path, overrides: list[str]) -> None:
    params = load_params(params_copy, overrides=overrides)
    flat = to_flat_dict(params)
    for item in overrides:
        key, _value = item.split("=", 1)
        assert key in flat
        assert flat[key] == OmegaConf.select(OmegaConf.from_dotlist([item]), key)


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(ParamsError) as info:
        params_from_dict({"train": {"optimizer": "adm", "scheduler": "step", "lr": 0}, "trainer": {"devices": 0}})
    message = str(info.value)
    assert "(4 problems)" in message.splitlines()[0]
    assert len(_problems(message)) == 4


# ---------------------------------------------------------------------------------------------------------------
# The file itself
# ---------------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections"):
        load_params(path)


def test_override_without_equals_sign(params_copy: Path) -> None:
    with pytest.raises(ParamsError, match="expected key=value"):
        load_params(params_copy, overrides=["train.lr"])


def test_params_error_is_a_pipeline_error() -> None:
    # run_cli turns PipelineError (and so ParamsError) into a clean exit 2.
    assert issubclass(ParamsError, PipelineError)


# ---------------------------------------------------------------------------------------------------------------
# python -m pipeline.stages.validate
# ---------------------------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_DEBUG", "DVC_ROOT")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_validate_cli_accepts_the_repository_params() -> None:
    result = subprocess.run(
        stage_command("validate"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "params.yaml: OK" in result.stdout


def test_validate_cli_rejects_a_bad_override_cleanly() -> None:
    result = subprocess.run(
        stage_command("validate", "-S", "train.lrr=1"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "train.lrr: unknown key" in result.stderr
    assert "Did you mean 'train.lr'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert "OK" not in result.stdout


def test_validate_does_not_import_heavy_libraries() -> None:
    script = (
        "import runpy, sys\n"
        "sys.argv = ['pipeline.stages.validate']\n"
        "runpy.run_module('pipeline.stages.validate', run_name='__main__', alter_sys=True)\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning', 'mlflow', 'sklearn')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "params.yaml: OK" in result.stdout
    assert "HEAVY=\n" in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------------------------
# `python -m pipeline.stages.exp`: -S overrides checked before `dvc exp run` queues anything
# ---------------------------------------------------------------------------------------------------------------
def test_sweep_values_split_on_top_level_commas_only() -> None:
    from pipeline.stages.exp import sweep_values

    assert sweep_values("0.001,0.01") == ["0.001", "0.01"]
    assert sweep_values("[16,32],[8]") == ["[16,32]", "[8]"]
    assert sweep_values("'a,b',c") == ["'a,b'", "c"]


def test_every_sweep_combination_is_validated() -> None:
    from pipeline.stages.exp import validate_sweep

    params = str(REPO / "params.yaml")
    assert validate_sweep(["--queue", "-S", "model.name=mlp,cnn", "-S", "train.lr=0.001,0.01"], params) == 4
    assert validate_sweep(["-S", "params.yaml:model.cnn.channels=[16,32],[8]"], params) == 2
    with pytest.raises(ParamsError, match=r"model.name: 'cnnn'.*Did you mean 'cnn'") as err:
        validate_sweep(["--queue", "-S", "model.name=mlp,cnnn"], params)
    assert "Nothing was queued" in str(err.value)
    with pytest.raises(ParamsError, match=r"train.lr: 'fast' is not a number"):
        validate_sweep(["-S", "train.lr=0.01,fast"], params)


def test_exp_command_rejects_a_typo_before_dvc_runs(tmp_path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = subprocess.run(
        stage_command("exp", "--queue", "-S", "train.lrr=0.1"),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "train.lrr: unknown key. Did you mean 'train.lr'?" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / ".dvc").exists()


@pytest.mark.parametrize("value", ["-1", "many", "true", "1.5"])
def test_bad_num_workers_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ParamsError, match=r"trainer\.num_workers"):
        load_params(REPO / "params.yaml", [f"trainer.num_workers={value}"])


@pytest.mark.parametrize("value", ["auto", "0", "3"])
def test_num_workers_accepts_auto_none_or_a_number(value: str) -> None:
    loaded = load_params(REPO / "params.yaml", [f"trainer.num_workers={value}"]).trainer.num_workers
    assert loaded == (value if value == "auto" else int(value))
