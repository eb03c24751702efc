"""The params.yaml schema: one typed dataclass per section, and the checks that run before any work.

This module imports nothing heavy (no torch, Lightning, MLflow or scikit-learn), so every stage can reject a bad
params.yaml in a fraction of a second, before paying for those imports.

Field metadata carries the rules a value must obey on its own (`choices`, `min`, `gt`); rules that tie several
fields together live in `_check_combinations`. Every problem becomes one line of a `ParamsError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from models.specs import heads_problem, model_input_problem
from pipeline import defaults
from pipeline.defaults import AUTO_MODEL
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
BUILTIN_DATASETS = {"digits": "image", "breast_cancer": "tabular", "wine": "tabular", "iris": "tabular"}


@dataclass
class TabularParams:
    target: str | None = None  # the label column; required for a CSV/Parquet file
    features: list[str] | None = None  # null: every column but the target
    categorical: list[str] | None = None  # null: detected (text, boolean and category columns)
    # embedding: one index per categorical column (0 missing/unknown, 1..K), embedded by the MLP
    categorical_encoding: str = _choice("onehot", "onehot", "embedding")
    numeric_impute: str = _choice("median", "mean", "median", "most_frequent")
    scaling: str = _choice("standard", "standard", "minmax", "none")
    dates: list[str] | None = None  # null: detected (text parsed as dates); each becomes calendar features
    drop: list[str] | None = None  # columns left out of the features
    # onehot: a detected text column with more distinct training values is left out (named in a warning)
    max_categories: int = _positive(100)
    chunk_rows: int = _positive(262_144)  # a file is read this many rows at a time: prepare never holds it whole
    fit_rows: int = _positive(1_000_000)  # the preprocessing is fitted on at most this many training rows (a sample)


@dataclass
class ImageParams:
    size: list[int] | None = None  # [height, width] to resize to; null: keep (all images must share one size)
    color: str = _choice("grayscale", "grayscale", "rgb")


@dataclass
class TextParams:
    text_column: str | None = None  # null: a file without header, label first then text (SMS Spam format)
    label_column: str | None = None
    delimiter: str | None = None  # null: tab for .tsv and header-less files, else comma
    lowercase: bool = True
    strip_urls: bool = True
    strip_numbers: bool = False
    strip_punctuation: bool = False
    tokenizer: str = _choice("word", "word", "char")
    min_freq: int = _positive(1)  # of a token in the training split, to enter the vocabulary
    max_vocab: int = field(default=20000, metadata={"gt": 2})  # PAD and UNK included
    max_len: int = _positive(64)  # tokens per text; longer ones are truncated, shorter ones padded


@dataclass
class DataParams:
    dataset: str = "digits"  # a built-in (digits, breast_cancer, wine, iris) or a path: .csv .tsv .parquet .npz, folder
    kind: str = _choice("auto", "auto", "image", "tabular", "text")  # auto: from the built-in or the file type
    val_fraction: float = _fraction(0.15)
    test_fraction: float = _fraction(0.2)
    seed: int = 42
    tabular: TabularParams = field(default_factory=TabularParams)
    image: ImageParams = field(default_factory=ImageParams)
    text: TextParams = field(default_factory=TextParams)

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if self.dataset in BUILTIN_DATASETS:
            return BUILTIN_DATASETS[self.dataset]
        suffix = Path(self.dataset).suffix.lower()
        if suffix == ".npz" or not suffix:
            return "image"  # an array file or a folder with one sub-folder per class
        return "tabular"  # .csv .tsv .parquet; set data.kind: text for messages


# The keys pipeline/defaults.py lists are "auto: chosen per data kind" when params.yaml leaves them null or out
# (model.name: auto); they are resolved when params are loaded, before the checks that tie keys together. The
# schema's defaults here and in TrainParams are what a Params built in code gets, and what a kind's table lacks.
@dataclass
class MLPParams:
    hidden_dims: list[int] | None = field(default_factory=lambda: [256, 128])  # auto; []: a linear model
    dropout: float | None = field(default=0.1, metadata={"min": 0, "lt": 1})  # auto
    embedding_dim: int = _positive(64)  # text: tokens, mean-pooled; tables: min(this, categories) per column


@dataclass
class CNNParams:
    """2-D over images; 1-D over token embeddings for text."""

    channels: list[int] | None = field(default_factory=lambda: [32, 64])  # auto
    kernel_size: int = _positive(3)
    hidden_dim: int = _positive(128)
    dropout: float = field(default=0.25, metadata={"min": 0, "lt": 1})
    embedding_dim: int | None = _positive(64)  # text only; auto


@dataclass
class RNNParams:
    """Over token embeddings (text) or over image rows (each row one time step)."""

    cell: str = _choice("lstm", "lstm", "gru")
    hidden_size: int = _positive(128)
    num_layers: int = _positive(1)
    bidirectional: bool = True
    dropout: float = field(default=0.2, metadata={"min": 0, "lt": 1})
    embedding_dim: int = _positive(64)  # text only


@dataclass
class TransformerParams:
    """Encoder over token embeddings (text) or image rows, with learned positional encodings."""

    d_model: int = _positive(64)
    n_heads: int = _positive(4)
    num_layers: int = _positive(2)
    dim_feedforward: int = _positive(128)
    dropout: float = field(default=0.1, metadata={"min": 0, "lt": 1})
    pooling: str = _choice("cls", "cls", "mean")


@dataclass
class ModelParams:
    """`name` picks the architecture (auto: by the kind of data); each architecture's hyper-parameters live under
    its own name."""

    name: str = "cnn"
    mlp: MLPParams = field(default_factory=MLPParams)
    cnn: CNNParams = field(default_factory=CNNParams)
    rnn: RNNParams = field(default_factory=RNNParams)
    transformer: TransformerParams = field(default_factory=TransformerParams)


MODEL_NAMES = tuple(f.name for f in dataclasses.fields(ModelParams) if f.name != "name")

# The headline metrics: one set of names in the DVC metrics file (evaluate), MLflow (`test/...`, `baseline/...`),
# the console and `python -m pipeline.stages.compare`. Defined here, where nothing heavy is imported.
HEADLINE_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")

# Metrics the LightningModule logs once per validation epoch; early stopping, checkpointing and the plateau
# scheduler may watch any of them. Loss is minimised, the others maximised.
MONITORABLE_METRICS = ("val/loss", "val/accuracy", "val/f1_macro")


@dataclass
class TrainParams:
    seed: int = 42
    batch_size: int | None = _positive(64)  # auto
    max_epochs: int | None = _positive(40)  # auto
    optimizer: str = _choice("adamw", "sgd", "adam", "adamw")
    lr: float | None = _positive(1e-3)  # auto
    weight_decay: float | None = _non_negative(1e-4)  # auto
    momentum: float = field(default=0.9, metadata={"min": 0, "lt": 1})  # sgd only
    scheduler: str = _choice("cosine", "none", "step", "cosine", "plateau")
    step_size: int | None = field(default=None, metadata={"gt": 0})  # epochs between decays (step)
    gamma: float = _fraction(0.1)  # decay factor (step, plateau)
    plateau_patience: int = _non_negative(5)
    min_lr: float = _non_negative(0.0)  # floor of cosine and plateau
    monitor: str | None = _choice("val/loss", *MONITORABLE_METRICS)  # early stopping, checkpoint, plateau; auto
    early_stopping_patience: int | None = field(default=10, metadata={"gt": 0})  # null: off
    gradient_clip_val: float | None = field(default=None, metadata={"gt": 0})  # null: off
    ema_decay: float | None = field(default=0.0, metadata={"min": 0, "lt": 1})  # weight averaging; 0: off; auto
    class_weights: str | None = _choice("none", "none", "balanced")  # balanced: inverse to class frequency; auto
    cv_folds: int = _non_negative(0)  # k >= 2: k-fold cross-validation on train + val before the final fit


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
    # torch/OpenMP/BLAS threads per process: auto = the cores this process may use (affinity, cgroup quota) divided
    # by the processes sharing them (DDP processes on the node, parallel DVC queue experiments); or a number
    num_threads: Any = "auto"
    # DataLoader worker processes: auto = none for memory-mapped arrays (a batch is gathered faster than it is sent
    # between processes), AUTO_IMAGE_WORKERS for image folders, whose files are decoded as batches are taken
    num_workers: Any = "auto"


@dataclass
class EvaluateParams:
    batch_size: int = _positive(1024)
    baseline: bool = True  # also fit and score a classical model (pipeline/evaluation/baseline.py) on the same splits


@dataclass
class MlflowParams:
    tracking_uri: str | None = None  # null: sqlite store at the repository root, or $MLFLOW_TRACKING_URI
    experiment_name: str = "default-pipeline"
    run_name: str | None = None  # null: [DVC experiment name] <model> <params differing from the committed>
    register_model: str | None = None  # a name: register each evaluated model as a new version of it
    # How long a tracking server may not answer before the stage gives up (MLflow's retries, bounded to this).
    max_unreachable_s: int = _positive(120)
    system_metrics: bool = True  # MLflow's CPU, memory (and GPU) metrics of the run, sampled while it runs


@dataclass
class TuneParams:
    """`python -m pipeline.stages.tune`: an Optuna study over `space`, each trial trained on train and judged on val."""

    study_name: str = "tune"  # also the DVC experiment the best setting is trained as
    # dotted params.yaml key -> {low, high[, log][, step]} (a number or integer key) or {choices: [...]}
    space: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = field(default=40, metadata={"gt": 0})  # finished trials of the study, all workers
    timeout_s: float | None = field(default=None, metadata={"gt": 0})  # per command; null: no time limit
    metric: str = _choice("val/loss", *MONITORABLE_METRICS)  # also train.monitor of every trial and the final run
    direction: str = _choice("auto", "auto", "minimize", "maximize")  # auto: minimize a loss, maximize the others
    sampler: str = _choice("tpe", "tpe", "random")
    seed: int = 42  # of the sampler
    pruner: str = _choice("median", "median", "hyperband", "none")
    pruner_startup_trials: int = _non_negative(5)  # median: trials finished before any is pruned
    pruner_warmup_epochs: int = _non_negative(2)  # median: epochs of a trial before it may be pruned
    storage: str | None = None  # null: a journal file at the repository root; postgresql://... to share a study
    workers: int = _positive(1)  # tune processes sharing this machine's cores (threads per trial = cores / this)


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    trainer: TrainerParams = field(default_factory=TrainerParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    tune: TuneParams = field(default_factory=TuneParams)
    # Not params.yaml keys: which keys `auto` resolved, for the kind of data (set by `resolve_auto`).
    auto_keys: ClassVar[tuple[str, ...]] = ()
    defaults_kind: ClassVar[str] = ""


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
        try:
            raw = OmegaConf.merge(raw, _parse_overrides(overrides))
        except OmegaConfBaseException as exc:  # a value of another shape than the file's (a list for a section)
            raise ParamsError(
                f"overrides {overrides}: {str(exc.msg).splitlines()[0]}; give a value of the shape "
                "params.yaml has there."
            ) from None
    return params_from_dict(_as_dict(raw), source=str(path))


def params_from_dict(data: dict, source: str = PARAMS_FILE) -> Params:
    problems = _unknown_keys(Params, data, prefix="") + _environment_lookups(data, prefix="")
    if problems:
        raise ParamsError(_format(source, problems))
    data = defaults.mark_unset(data)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Params), data)
        params = typing.cast(Params, OmegaConf.to_object(merged))  # a structured config of Params becomes one
    except ValidationError as exc:
        raise ParamsError(_format(source, [_type_problem(exc)])) from None
    except OmegaConfBaseException as exc:
        raise ParamsError(_format(source, [f"{exc.full_key or 'params'}: {exc.msg}"])) from None
    problems = _check_fields(params, prefix="")  # values as written, before auto fills any
    if params.model.name != AUTO_MODEL and params.model.name not in MODEL_NAMES:
        problems += _model_name_problem(params.model.name)
    kind = params.data.resolved_kind
    resolve_auto(params, kind if kind in defaults.BY_KIND else "tabular")  # a bad data.kind is listed already
    problems += _check_combinations(params)
    if not problems and params.tune.space:  # each range end / choice is checked as an override of the rest
        problems = _check_tune_space(params.tune.space, {k: v for k, v in data.items() if k != "tune"})
    if problems:
        raise ParamsError(_format(source, problems))
    return params


def resolve_auto(params: Params, kind: str) -> None:
    """Fill the auto keys from `kind`'s defaults (pipeline/defaults.py) and record which ones were filled. Idempotent:
    params already resolved keep their values and their record."""
    filled = defaults.resolve(params, kind)
    if filled:
        params.auto_keys = (*params.auto_keys, *filled)  # type: ignore[misc]  # per instance, not per class
        params.defaults_kind = kind  # type: ignore[misc]


T = TypeVar("T")


def resolved(value: T | None) -> T:
    """`value` without None, for the type checker: in params from `load_params` an auto key holds its kind's value
    (`resolve_auto`), and a key `_check_combinations` requires (train.step_size for scheduler: step) is set."""
    if value is None:
        raise ValueError("an auto or required params key is still null: params were not loaded by load_params")
    return value


def _as_dict(config: DictConfig | ListConfig) -> dict[Any, Any]:
    data = OmegaConf.to_container(config)
    if not isinstance(data, dict):  # a DictConfig always converts to a dict
        raise TypeError(f"expected a mapping, got {type(data).__name__}")
    return data


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


# Options that only one choice of another key reads: logged (and named in run names) only with that choice.
OPTION_USED_WHEN = {
    "train.momentum": ("train.optimizer", ("sgd",)),
    "train.step_size": ("train.scheduler", ("step",)),
    "train.gamma": ("train.scheduler", ("step", "plateau")),
    "train.plateau_patience": ("train.scheduler", ("plateau",)),
    "train.min_lr": ("train.scheduler", ("cosine", "plateau")),
}
# Sections no run reads for its model or data (evaluate logs its own, mlflow.* only says where runs go).
UNUSED_BY_RUNS = ("evaluate.", "mlflow.", "tune.")  # tune.storage may hold a password


def used_params(params: Params, kind: str) -> dict[str, Any]:
    """The flat params a training run on `kind` data actually reads: the chosen model's section, the data kind's
    section, train and trainer without the options of an optimizer or scheduler that is not chosen."""
    flat = to_flat_dict(params)
    unused = [f"model.{name}." for name in MODEL_NAMES if name != params.model.name]
    unused += [f"data.{other}." for other in ("tabular", "image", "text") if other != kind]
    used = {}
    for key, value in flat.items():
        if key.startswith((*UNUSED_BY_RUNS, *unused)):
            continue
        if key in OPTION_USED_WHEN:
            chooser, choices = OPTION_USED_WHEN[key]
            if flat[chooser] not in choices:
                continue
        if key.endswith(".embedding_dim") and kind == "image" and key.startswith("model."):
            continue  # embeds tokens or categories: images have neither
        used[key] = value
    return used


def config_hash(params: Params) -> str:
    """A content hash of the whole resolved config: equal configurations, equal hashes (an MLflow tag)."""
    text = json.dumps(to_flat_dict(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        if isinstance(sub_schema, type) and dataclasses.is_dataclass(sub_schema):
            problems += _unknown_keys(sub_schema, value, f"{path}.")
    return problems


# `${oc.env:NAME}` would resolve an environment variable (often a secret) into a value MLflow logs as a param.
_ENV_LOOKUP = re.compile(r"\$\{\s*oc\.env\s*:")


def _environment_lookups(data: Any, prefix: str) -> list[str]:
    """Keys whose value reads an environment variable through OmegaConf's oc.env resolver."""
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in _environment_lookups(value, f"{prefix}{key}.")]
    if isinstance(data, list):
        return [p for i, value in enumerate(data) for p in _environment_lookups(value, f"{prefix[:-1]}[{i}].")]
    if isinstance(data, str) and _ENV_LOOKUP.search(data):
        return [
            (
                f"{prefix[:-1]}: reads an environment variable (oc.env), whose value would be logged to MLflow "
                "as a param; write the value itself. Credentials belong in the environment MLflow reads "
                "(MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*), never in params.yaml."
            )
        ]
    return []


def _type_problem(exc: ValidationError) -> str:
    key = str(exc.full_key)
    expected = _expected_type(key)
    return f"{key}: {exc.value!r} is not {expected}. Write {expected}, e.g. {_EXAMPLES.get(expected, '...')}."


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_EXAMPLES = {
    "an integer": "10",
    "a number": "0.001",
    "true or false": "true",
    "a string": "adam",
    "a list of integers": "[32, 64]",
}


def _expected_type(dotted_key: str) -> str:
    """'model.cnn.channels[1]' -> 'an integer', read off the schema's type hints."""
    hint: Any = Params
    for part in dotted_key.split("."):
        name, _, index = part.partition("[")
        hint = typing.get_type_hints(hint)[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None (Optional[X])
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
    problems += _check_data(p.data)
    if p.data.tabular.categorical_encoding == "embedding" and p.trainer.precision in ("16-true", "bf16-true"):
        # The indices travel in the float input; 16-bit floats hold whole numbers exactly only up to 2048 (fp16)
        # or 256 (bf16), so larger category indices would be rounded to a neighbour's.
        problems.append(
            f"trainer.precision: '{p.trainer.precision}' casts the input to 16-bit floats, which round "
            "the category indices of data.tabular.categorical_encoding: embedding; use 32-true or a "
            "mixed precision (bf16-mixed, 16-mixed), or categorical_encoding: onehot."
        )
    hidden_dims, channels = resolved(p.model.mlp.hidden_dims), resolved(p.model.cnn.channels)
    if any(s <= 0 for s in hidden_dims):  # [] is allowed: a linear model on the features
        problems.append(f"model.mlp.hidden_dims: every size must be > 0, got {list(hidden_dims)}.")
    if not channels or any(s <= 0 for s in channels):
        problems.append(f"model.cnn.channels: needs at least one layer and every size > 0, got {list(channels)}.")
    t = p.model.transformer
    heads = heads_problem(t.d_model, t.n_heads)
    if heads:
        problems.append(heads)
    if p.train.scheduler == "step" and p.train.step_size is None:
        problems.append(
            "train.scheduler is 'step' but train.step_size is not set: give the number of epochs "
            "between learning-rate decays (e.g. train.step_size: 10)."
        )
    problems += _check_devices(p.trainer)
    problems += _check_num_threads(p.trainer.num_threads)
    problems += _check_num_workers(p.trainer.num_workers)
    if p.trainer.precision in ("16-mixed", "16-true") and p.trainer.accelerator == "cpu":
        problems.append(
            f"trainer.precision '{p.trainer.precision}' needs a GPU; on trainer.accelerator 'cpu' use "
            "'bf16-mixed' or '32-true'."
        )
    if p.train.cv_folds > 1 and (p.trainer.devices not in (1, [0]) or p.trainer.num_nodes > 1):
        problems.append(
            "train.cv_folds > 1 runs its folds in one process: use trainer.devices 1 and num_nodes 1 "
            "with it (cross-validate first, then train on several devices with cv_folds: 0)."
        )
    if p.trainer.num_nodes > 1 and p.trainer.strategy == "auto":
        problems.append("trainer.num_nodes > 1 needs a distributed trainer.strategy: set it to 'ddp'.")
    problems += _check_mlflow(p.mlflow)
    problems += _check_tune(p.tune)
    return problems


# Stores MLflow 3 opens without a plugin ("postgresql+psycopg2" and the like count by their dialect). A bare folder
# or file: URI is MLflow's file store, which refuses to open since 3.x unless an environment opt-out is set.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def _model_name_problem(name: str) -> list[str]:
    close = difflib.get_close_matches(name, (AUTO_MODEL, *MODEL_NAMES), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return [f"model.name: '{name}' is not one of {AUTO_MODEL}, {', '.join(MODEL_NAMES)}.{hint}"]


def _check_mlflow(m: MlflowParams) -> list[str]:
    """What MLflow would otherwise reject with a traceback, after the stage has paid for its imports."""
    problems = []
    if not m.experiment_name.strip():
        problems.append("mlflow.experiment_name is empty: name the MLflow experiment the runs go to (e.g. digits).")
    if m.tracking_uri:
        scheme = m.tracking_uri.partition(":")[0].split("+")[0]  # a bare path has none: it stays whole
        if scheme not in TRACKING_SCHEMES:
            from pipeline.uris import masked_uri

            shown = masked_uri(m.tracking_uri)
            problems.append(
                f"mlflow.tracking_uri: '{shown}' is not a tracking store MLflow can open; use "
                "sqlite:///<path>/mlflow.db, a server http://<host>:<port>, a database "
                "postgresql://<user>@<host>/<db>, or null for mlflow.db at the repository root."
            )
    return problems


def _check_data(d: DataParams) -> list[str]:
    problems = []
    kind = d.resolved_kind
    if d.dataset not in BUILTIN_DATASETS and not d.dataset.strip():
        problems.append("data.dataset is empty: name a built-in (digits, breast_cancer, wine, iris) or a file.")
    if d.dataset in BUILTIN_DATASETS and kind != BUILTIN_DATASETS[d.dataset]:
        problems.append(
            f"data.kind is '{d.kind}' but the built-in '{d.dataset}' is {BUILTIN_DATASETS[d.dataset]} "
            "data; set data.kind: auto."
        )
    if kind == "tabular" and d.dataset not in BUILTIN_DATASETS and not d.tabular.target:
        problems.append(f"data.tabular.target is not set: name the label column of {d.dataset}.")
    if d.image.size is not None and (len(d.image.size) != 2 or min(d.image.size) < 1):
        problems.append(f"data.image.size: {list(d.image.size)} is not [height, width] with both > 0.")
    if kind == "text" and bool(d.text.text_column) != bool(d.text.label_column):
        problems.append(
            "data.text.text_column and data.text.label_column go together: set both (a file with a "
            "header) or neither (no header: label, then text)."
        )
    if kind == "text" and d.text.text_column and d.text.text_column == d.text.label_column:
        problems.append(
            f"data.text.text_column and data.text.label_column are both '{d.text.text_column}': the "
            "label must come from a column of its own."
        )
    return problems


def _check_tune(t: TuneParams) -> list[str]:
    problems = []
    if t.n_trials is None and t.timeout_s is None:
        problems.append(
            "tune.n_trials and tune.timeout_s are both null: set a number of trials, a time budget in seconds, or both."
        )
    if t.direction != "auto" and t.direction != objective_direction(t.metric, "auto"):
        auto = objective_direction(t.metric, "auto")
        problems.append(
            f"tune.direction: '{t.direction}' contradicts tune.metric '{t.metric}', which early stopping "
            f"and the best checkpoint also follow (as '{auto}'); use auto or {auto}."
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", t.study_name) or ".." in t.study_name:
        problems.append(
            f"tune.study_name: '{t.study_name}' is also a DVC experiment name: use letters, digits, "
            "'-', '_' and '.', e.g. tune-breast-cancer."
        )
    if t.storage and t.storage.partition(":")[0].split("+")[0] not in ("postgresql", "mysql", "sqlite"):
        problems.append(
            "tune.storage: not a database URL Optuna can share a study through; use "
            "postgresql://<user>@<host>/<db> (the password in PGPASSWORD or ~/.pgpass, not here), or null "
            "for a journal file at the repository root."
        )
    return problems


def objective_direction(metric: str, direction: str) -> Literal["minimize", "maximize"]:
    """Optuna's direction for tune.direction ('auto' follows the metric, as early stopping does)."""
    if direction != "auto":
        return typing.cast(Literal["minimize", "maximize"], direction)  # the schema allows only these and auto
    return "minimize" if metric.endswith("loss") else "maximize"


TUNABLE_SECTIONS = ("model", "train")  # what a trial can change without preparing the data again
RANGE_KEYS = {"low", "high", "log", "step"}


def _check_tune_space(space: dict[str, Any], rest: dict[str, Any]) -> list[str]:
    """Every range is well formed and every value it can take (its ends, each choice) is valid as an override of
    params.yaml, as `-S key=value` would be; nothing is tried before all pass."""
    problems = []
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if key.split(".")[0] not in TUNABLE_SECTIONS:
            problems.append(
                f"{where}: only keys under {' and '.join(TUNABLE_SECTIONS)} can be searched (trials "
                "share one prepared data set and one trainer set-up)."
            )
            continue
        if key == "train.monitor":
            problems.append(f"{where}: trials monitor tune.metric; set that instead.")
            continue
        if not isinstance(spec, dict) or not (set(spec) == {"choices"} or {"low", "high"} <= set(spec) <= RANGE_KEYS):
            problems.append(
                f"{where}: expected {{low: .., high: ..}} (optionally log: true, step: ..) or "
                f"{{choices: [..]}}, got {spec!r}."
            )
            continue
        if "choices" in spec:
            values = spec["choices"]
            if not isinstance(values, list) or not values:
                problems.append(f"{where}.choices: expected a non-empty list, got {values!r}.")
                continue
        else:
            values = [spec["low"], spec["high"]]
            kind = _expected_type(key) if _key_exists(key) else None
            if kind is not None and kind not in ("an integer", "a number"):
                problems.append(f"{where}: {key} is {kind}, not a number: give it {{choices: [..]}} instead.")
                continue
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                problems.append(f"{where}: low and high must be numbers, got {values!r}.")
                continue
            if not spec["low"] < spec["high"]:
                problems.append(f"{where}: low ({spec['low']}) must be below high ({spec['high']}).")
            if spec.get("log") and spec["low"] <= 0:
                problems.append(f"{where}: a log range needs low > 0, got {spec['low']}.")
            if spec.get("log") and spec.get("step") is not None:
                problems.append(f"{where}: log and step do not go together (Optuna refuses them); drop one.")
        for value in values:
            problem = _override_problem(rest, key, value)
            if problem:
                problems.append(f"{where}: the value {value!r} is refused: {problem}")
                break
    return problems


def is_integer_key(dotted_key: str) -> bool:
    """Does the schema type this params.yaml key as an integer (train.batch_size) rather than a number?"""
    return _expected_type(dotted_key) == "an integer"


def _key_exists(dotted_key: str) -> bool:
    schema: Any = Params
    for part in dotted_key.split("."):
        if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)) or part not in _field_names(schema):
            return False
        schema = typing.get_type_hints(schema)[part]
    return not dataclasses.is_dataclass(schema)


def _override_problem(data: dict[str, Any], key: str, value: Any) -> str | None:
    """Why params.yaml with `key` set to `value` is invalid (as `-S key=value` would be), or None."""
    if not _key_exists(key):
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        found = _unknown_keys(Params, nested, "")
        return found[0] if found else f"{key}: not a single value of params.yaml (a section, or below a value)."
    candidate = OmegaConf.create(data)
    OmegaConf.update(candidate, key, value, merge=False)
    try:
        params_from_dict(_as_dict(candidate))
    except ParamsError as exc:
        return "; ".join(line.strip(" -") for line in str(exc).splitlines()[1:])
    return None


def check_model_fits_data(model_name: str, kind: str) -> None:
    """Called by train with the prepared data's kind, before any heavy import."""
    problem = model_input_problem(model_name, kind)
    if problem:
        raise ParamsError(problem)


def _check_devices(t: TrainerParams) -> list[str]:
    devices = t.devices
    if devices == "auto":
        return []
    if isinstance(devices, bool) or not (
        isinstance(devices, int) or (isinstance(devices, list) and all(isinstance(d, int) for d in devices))
    ):
        return [
            f"trainer.devices: {devices!r} is not valid; use a positive number of devices, a list of device "
            "indices such as [0, 1], or 'auto'."
        ]
    count = devices if isinstance(devices, int) else len(devices)
    if count < 1:
        return [f"trainer.devices: {devices!r} asks for no device at all; use 1 or more (or 'auto')."]
    if count > 1 and t.strategy == "auto" and t.accelerator == "cpu":
        return [
            "trainer.devices > 1 on the CPU needs trainer.strategy 'ddp' (Lightning would pick ddp_spawn, "
            "which re-pickles the whole stage per process)."
        ]
    return []


def _auto_or_count(value: Any, least: int) -> bool:
    """`auto`, or an integer (not a bool: YAML's true is an int to Python) of at least `least`."""
    return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= least)


def _check_num_threads(num_threads: Any) -> list[str]:
    if _auto_or_count(num_threads, 1):
        return []
    return [
        f"trainer.num_threads: {num_threads!r} is not valid; use auto (the cores shared among the processes "
        "that run at once) or a number of threads of at least 1."
    ]


def _check_num_workers(num_workers: Any) -> list[str]:
    if _auto_or_count(num_workers, 0):
        return []
    return [
        f"trainer.num_workers: {num_workers!r} is not valid; use auto (none for prepared arrays, a few for image "
        "folders) or a number of DataLoader worker processes (0: load batches in the training process)."
    ]


def _format(source: str, problems: list[str]) -> str:
    head = f"{source} is invalid ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
    return "\n".join([head, *(f"  - {p}" for p in problems)])
