"""The params.yaml schema: one typed dataclass per section, and the checks that run before any work.

This module imports nothing heavy (no torch, Lightning, MLflow or scikit-learn), so every stage can reject a bad
params.yaml in a fraction of a second, before paying for those imports.

Field metadata carries the rules a value must obey on its own (`choices`, `min`, `gt`); rules that tie several
fields together live in `_check_combinations`. Every problem becomes one line of a `ParamsError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from pipeline.errors import PipelineError

PARAMS_FILE = "params.yaml"


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


def _positive(default: Any) -> Any:
    return field(default=default, metadata={"gt": 0})


def _non_negative(default: Any) -> Any:
    return field(default=default, metadata={"min": 0})


def _fraction(default: float) -> Any:
    return field(default=default, metadata={"gt": 0, "lt": 1})


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DataParams:
    dataset: str = _choice("digits", "digits")
    val_fraction: float = _fraction(0.15)
    test_fraction: float = _fraction(0.2)
    seed: int = 42


@dataclass
class MLPParams:
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = field(default=0.1, metadata={"min": 0, "lt": 1})


@dataclass
class CNNParams:
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = _positive(3)
    hidden_dim: int = _positive(128)
    dropout: float = field(default=0.25, metadata={"min": 0, "lt": 1})


@dataclass
class ModelParams:
    """`name` picks the architecture; each architecture's hyper-parameters live under its own name."""

    name: str = "cnn"
    mlp: MLPParams = field(default_factory=MLPParams)
    cnn: CNNParams = field(default_factory=CNNParams)


MODEL_NAMES = tuple(f.name for f in dataclasses.fields(ModelParams) if f.name != "name")

# Metrics the LightningModule logs once per validation epoch; early stopping, checkpointing and the plateau
# scheduler may watch any of them. Loss is minimised, the others maximised.
MONITORABLE_METRICS = ("val/loss", "val/acc", "val/f1")


@dataclass
class TrainParams:
    seed: int = 42
    batch_size: int = _positive(64)
    max_epochs: int = _positive(40)
    optimizer: str = _choice("adamw", "sgd", "adam", "adamw")
    lr: float = _positive(1e-3)
    weight_decay: float = _non_negative(1e-4)
    momentum: float = field(default=0.9, metadata={"min": 0, "lt": 1})  # sgd only
    scheduler: str = _choice("cosine", "none", "step", "cosine", "plateau")
    step_size: Optional[int] = field(default=None, metadata={"gt": 0})  # epochs between decays (step)
    gamma: float = _fraction(0.1)  # decay factor (step, plateau)
    plateau_patience: int = _non_negative(5)
    min_lr: float = _non_negative(0.0)  # floor of cosine and plateau
    monitor: str = _choice("val/loss", *MONITORABLE_METRICS)  # early stopping, checkpoint, plateau
    early_stopping_patience: Optional[int] = field(default=10, metadata={"gt": 0})  # null: off
    gradient_clip_val: Optional[float] = field(default=None, metadata={"gt": 0})  # null: off


@dataclass
class TrainerParams:
    accelerator: str = _choice("cpu", "auto", "cpu", "gpu", "cuda", "mps")
    devices: Any = 1  # a positive int, a list of device indices, or "auto"
    strategy: str = _choice("auto", "auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp")
    num_nodes: int = _positive(1)
    precision: str = _choice("32-true", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
    deterministic: bool = True
    progress_bar: bool = True
    log_every_n_steps: int = _positive(10)


@dataclass
class EvaluateParams:
    batch_size: int = _positive(1024)


@dataclass
class MlflowParams:
    tracking_uri: Optional[str] = None  # null: sqlite store at the repository root, or $MLFLOW_TRACKING_URI
    experiment_name: str = "default-pipeline"
    run_name: Optional[str] = None  # null: the DVC experiment's name, else one MLflow makes up


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    trainer: TrainerParams = field(default_factory=TrainerParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)


class ParamsError(PipelineError):
    """params.yaml (or an override) does not fit the schema."""


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def load_params(path: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read params.yaml, apply `key=value` overrides, and return the validated, typed parameters."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found. Run from the repository root, where params.yaml lives.")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and OmegaConf's own; the message says where
        raise ParamsError(f"{path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from None
    if raw is None or not isinstance(raw, DictConfig):
        raise ParamsError(f"{path}: expected a mapping of sections ({', '.join(_field_names(Params))}).")
    if overrides:
        raw = OmegaConf.merge(raw, _parse_overrides(overrides))
    return params_from_dict(OmegaConf.to_container(raw), source=str(path))


def params_from_dict(data: dict, source: str = PARAMS_FILE) -> Params:
    problems = _unknown_keys(Params, data, prefix="")
    if problems:
        raise ParamsError(_format(source, problems))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Params), data)
        params: Params = OmegaConf.to_object(merged)
    except ValidationError as exc:
        raise ParamsError(_format(source, [_type_problem(exc)])) from None
    except OmegaConfBaseException as exc:
        raise ParamsError(_format(source, [f"{exc.full_key or 'params'}: {exc.msg}"])) from None
    problems = _check_fields(params, prefix="") + _check_combinations(params)
    if problems:
        raise ParamsError(_format(source, problems))
    return params


def to_flat_dict(params: Params) -> dict[str, Any]:
    """Every resolved value under a dotted key (`train.lr`, `model.cnn.channels`), as MLflow params want them."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{prefix}{f.name}.")
        else:
            flat[prefix[:-1]] = node

    walk(params, "")
    return flat


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"override '{item}': expected key=value, e.g. train.lr=0.01.")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise ParamsError(f"overrides {overrides}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------
def _field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _unknown_keys(schema: type, data: Any, prefix: str) -> list[str]:
    """Keys in `data` the schema lacks, each with its full dotted path and the closest valid key."""
    if not isinstance(data, dict):
        if data is None:
            return []
        return [f"{prefix.rstrip('.') or 'params'}: expected a section (a mapping), got {data!r}."]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    problems = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            problems.append(f"{path}: unknown key.{hint} Valid keys here: {', '.join(fields)}.")
            continue
        sub = fields[key].type
        sub_schema = globals().get(sub) if isinstance(sub, str) else sub
        if dataclasses.is_dataclass(sub_schema):
            problems += _unknown_keys(sub_schema, value, f"{path}.")
    return problems


def _type_problem(exc: ValidationError) -> str:
    key = str(exc.full_key)
    expected = _expected_type(key)
    return f"{key}: {exc.value!r} is not {expected}. Write {expected}, e.g. {_EXAMPLES.get(expected, '...')}."


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_EXAMPLES = {"an integer": "10", "a number": "0.001", "true or false": "true", "a string": "adam",
             "a list of integers": "[32, 64]"}


def _expected_type(dotted_key: str) -> str:
    """'model.cnn.channels[1]' -> 'an integer', read off the schema's type hints."""
    hint: Any = Params
    for part in dotted_key.split("."):
        name, _, index = part.partition("[")
        hint = typing.get_type_hints(hint)[name]
        if typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if index:
            hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is list:
        return "a list of integers" if typing.get_args(hint)[0] is int else "a list"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _check_fields(node: Any, prefix: str) -> list[str]:
    problems = []
    for f in dataclasses.fields(node):
        value, path, rules = getattr(node, f.name), f"{prefix}{f.name}", f.metadata
        if dataclasses.is_dataclass(value):
            problems += _check_fields(value, f"{path}.")
            continue
        if value is None:
            continue
        choices = rules.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"{path}: '{value}' is not one of {', '.join(map(str, choices))}.{hint}")
        if "gt" in rules and not value > rules["gt"]:
            problems.append(f"{path}: must be greater than {rules['gt']}, got {value}.")
        if "min" in rules and not value >= rules["min"]:
            problems.append(f"{path}: must be at least {rules['min']}, got {value}.")
        if "lt" in rules and not value < rules["lt"]:
            problems.append(f"{path}: must be less than {rules['lt']}, got {value}.")
    return problems


def _check_combinations(p: Params) -> list[str]:
    problems = []
    if p.data.val_fraction + p.data.test_fraction >= 1:
        problems.append(
            f"data.val_fraction + data.test_fraction = {p.data.val_fraction + p.data.test_fraction:g} leaves no "
            "training data; keep their sum below 1 (e.g. 0.15 and 0.2)."
        )
    if p.model.name not in MODEL_NAMES:
        close = difflib.get_close_matches(p.model.name, MODEL_NAMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        problems.append(f"model.name: '{p.model.name}' is not one of {', '.join(MODEL_NAMES)}.{hint}")
    for path, sizes in (("model.mlp.hidden_dims", p.model.mlp.hidden_dims),
                        ("model.cnn.channels", p.model.cnn.channels)):
        if not sizes or any(s <= 0 for s in sizes):
            problems.append(f"{path}: needs at least one layer and every size > 0, got {list(sizes)}.")
    if p.train.scheduler == "step" and p.train.step_size is None:
        problems.append("train.scheduler is 'step' but train.step_size is not set: give the number of epochs "
                        "between learning-rate decays (e.g. train.step_size: 10).")
    problems += _check_devices(p.trainer)
    if p.trainer.precision in ("16-mixed", "16-true") and p.trainer.accelerator == "cpu":
        problems.append(f"trainer.precision '{p.trainer.precision}' needs a GPU; on trainer.accelerator 'cpu' use "
                        "'bf16-mixed' or '32-true'.")
    if p.trainer.num_nodes > 1 and p.trainer.strategy == "auto":
        problems.append("trainer.num_nodes > 1 needs a distributed trainer.strategy: set it to 'ddp'.")
    return problems


def _check_devices(t: TrainerParams) -> list[str]:
    devices = t.devices
    if devices == "auto":
        return []
    if isinstance(devices, bool) or not (
        isinstance(devices, int) or (isinstance(devices, list) and all(isinstance(d, int) for d in devices))
    ):
        return [f"trainer.devices: {devices!r} is not valid; use a positive number of devices, a list of device "
                "indices such as [0, 1], or 'auto'."]
    count = devices if isinstance(devices, int) else len(devices)
    if count < 1:
        return [f"trainer.devices: {devices!r} asks for no device at all; use 1 or more (or 'auto')."]
    if count > 1 and t.strategy == "auto" and t.accelerator == "cpu":
        return ["trainer.devices > 1 on the CPU needs trainer.strategy 'ddp' (Lightning would pick ddp_spawn, "
                "which re-pickles the whole stage per process)."]
    return []


def _format(source: str, problems: list[str]) -> str:
    head = f"{source} is invalid ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
    return "\n".join([head, *(f"  - {p}" for p in problems)])


