"""A user's mistakes, through the real commands: exit 2, one message naming the key or file and the fix, no
traceback, nothing lost.

Issue 5: malformed params.yaml, `-S` overrides and data files, each through the command a user would run.

One repository copy runs the default pipeline once (FAST_PARAMS), so outputs, dvc.lock and an MLflow store exist.
Each case then applies one bad input, runs the real command (`dvc repro`, or `python -m pipeline.stages.exp -S ...`,
which validates before handing over to `dvc exp run`), puts the input back, and checks: a non-zero exit; a message that
names the key (dotted path) or the file and says what to do; no Python traceback; no MLflow run left RUNNING and no
new run; every file of the repository byte-identical (outputs, dvc.lock, the DVC cache, the MLflow store); nothing
queued. The cases marked `fast` run by default, one or two per kind of mistake; `-m slow` runs the rest.

Two parts of dvc.yaml make this hold under `dvc repro`: DVC deletes a stage's outputs before running its command,
so params.yaml is checked by a first stage, `validate`, before any stage whose outputs a failure would cost (it also
catches a misspelt top-level section, which no other stage declares, and a bad `data.image.size`, a param DVC's run
cache would ignore: treeverse/dvc#10296); and the prepared data is `persist: true`, kept when prepare fails on bad
data. Any change to a file is a failure.

The stages as commands: a mistake the user can fix exits 2 with a short message and no traceback.

Bad data stops `python -m pipeline.stages.prepare` with exit code 2 and one message that names the file and the fix.

Each case writes its data into a fresh working directory holding a copy of params.yaml, points `data.*` at it and
runs the stage as a user would. Nothing may be left behind: no `prepared` folder (or the previous one untouched),
no temporary sibling of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import DataParams
from pipeline.stages.prepare import prepare
from tests.helpers import REPO, edit_params, make_repo_copy, run, sqlite_uri, stage_command

REPRO = ("dvc", "repro")
# A stage that only validates params.yaml records the params it checked in dvc.lock even when prepare then fails on
# bad data; that entry is not an output, so it is left out of the comparison.
VALIDATION_STAGE = "validate"
# Rewritten by the commands themselves on every call (git's index refresh, DVC's locks and state).
VOLATILE = (".git/", ".dvc/tmp/")


def exp(*overrides: str, queue: bool = True) -> tuple[str, ...]:
    """`python -m pipeline.stages.exp [--queue] -S ...`: what README tells users to run instead of dvc exp run."""
    return (
        sys.executable,
        "-m",
        "pipeline.stages.exp",
        *(["--queue"] if queue else []),
        *(arg for item in overrides for arg in ("-S", item)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad data files, written under data/raw (prepare's dependency) by each data case
# ---------------------------------------------------------------------------------------------------------------
def table(rows: list[tuple], header: str = "a,b,species", sep: str = ",") -> str:
    return header.replace(",", sep) + "\n" + "".join(sep.join(map(str, row)) + "\n" for row in rows)


def three_classes(n: int = 12) -> list[tuple]:
    return [(i, i * 0.5, ["x", "y", "z"][i % 3]) for i in range(n)]


def raw_file(name: str, content: str | bytes) -> Callable[[Path], None]:
    def write(repo: Path) -> None:
        path = repo / "data/raw" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return write


def messages(n: int = 12) -> str:
    return "".join(f"{['ham', 'spam'][i % 2]}\tmessage number {i}\n" for i in range(n))


def image_folder_with_a_corrupt_file(repo: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = repo / "data/raw/imgs" / label
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / f"{i}.png")
    (repo / "data/raw/imgs/dog/x.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image at all" * 4)


TABLE = {"data.tabular.target": "species"}


# ---------------------------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    names: tuple[str, ...]  # the key(s) or file the message must name
    hint: str  # what the message must say to do
    params: dict = field(default_factory=dict)  # dotted edits of params.yaml
    text_edit: tuple[str, str] | None = None  # (old, new) in params.yaml's text: what a dict edit cannot write
    files: Callable[[Path], None] | None = None  # bad data under data/raw
    command: tuple[str, ...] = REPRO
    fast: bool = False  # one of the default run's representative cases

    @property
    def through_exp(self) -> bool:
        return self.command[1:3] == ("-m", "pipeline.stages.exp")


CASES = [
    # Unknown keys, at every level of params.yaml
    Case("unknown-top-level-section", ("trainn",), "Did you mean 'train'?", {"trainn.lr": 0.1}),
    Case("unknown-key-in-section", ("train.lrr",), "Did you mean 'train.lr'?", {"train.lrr": 0.01}, fast=True),
    Case(
        "unknown-key-in-model-family",
        ("model.cnn.chanels",),
        "Did you mean 'model.cnn.channels'?",
        {"model.cnn.chanels": [8]},
    ),
    Case(
        "unknown-key-in-data-subsection",
        ("data.tabular.tagret",),
        "Did you mean 'data.tabular.target'?",
        {"data.tabular.tagret": "species"},
    ),
    Case("section-is-not-a-mapping", ("train",), "expected a section (a mapping)", {"train": 3}),
    Case("yaml-syntax-error", ("params.yaml",), ", column ", text_edit=("  lr: null", "  lr: [null")),
    # Wrong types
    Case("number-is-text", ("train.lr",), "Write a number, e.g.", {"train.lr": "fast"}, fast=True),
    Case("integer-is-fractional", ("train.max_epochs",), "Write an integer, e.g.", {"train.max_epochs": 2.5}),
    Case("list-item-is-text", ("model.cnn.channels[1]",), "Write an integer, e.g.", {"model.cnn.channels": [8, "x"]}),
    Case("bool-is-text", ("trainer.deterministic",), "Write true or false", {"trainer.deterministic": "maybe"}),
    # Negative or zero sizes
    Case("zero-batch-size", ("train.batch_size",), "must be greater than 0", {"train.batch_size": 0}, fast=True),
    Case("negative-hidden-dim", ("model.cnn.hidden_dim",), "must be greater than 0", {"model.cnn.hidden_dim": -4}),
    Case("zero-evaluate-batch-size", ("evaluate.batch_size",), "must be greater than 0", {"evaluate.batch_size": 0}),
    Case("no-layers", ("model.cnn.channels",), "needs at least one layer", {"model.cnn.channels": []}),
    # Unknown optimizer, scheduler, model, ...
    Case("unknown-optimizer", ("train.optimizer",), "Did you mean 'adam'?", {"train.optimizer": "adm"}, fast=True),
    Case("unknown-scheduler", ("train.scheduler",), "Did you mean 'cosine'?", {"train.scheduler": "cosin"}),
    Case("unknown-model", ("model.name",), "is not one of auto, mlp, cnn, rnn, transformer", {"model.name": "resnet"}),
    Case("unknown-accelerator", ("trainer.accelerator",), "Did you mean 'gpu'?", {"trainer.accelerator": "gpuu"}),
    # Impossible model shapes and combinations
    Case(
        "heads-do-not-divide-width",
        ("model.transformer.d_model", "model.transformer.n_heads"),
        "n_heads can be one of [1, 2, 4, 8, 16]",
        {"model.transformer.n_heads": 5},
        fast=True,
    ),
    Case(
        "step-scheduler-without-step-size",
        ("train.scheduler", "train.step_size"),
        "e.g. train.step_size: 10",
        {"train.scheduler": "step"},
    ),
    Case("image-size-not-two-numbers", ("data.image.size",), "[height, width]", {"data.image.size": [8]}),
    Case("kind-contradicts-built-in", ("data.kind",), "set data.kind: auto", {"data.kind": "text"}),
    # Bad split ratios
    Case(
        "split-leaves-no-training-data",
        ("data.val_fraction", "data.test_fraction"),
        "keep their sum below 1",
        {"data.val_fraction": 0.5, "data.test_fraction": 0.5},
        fast=True,
    ),
    Case("split-fraction-above-one", ("data.test_fraction",), "must be less than 1", {"data.test_fraction": 1.5}),
    # Bad device settings
    Case("no-devices", ("trainer.devices",), "use 1 or more", {"trainer.devices": 0}, fast=True),
    Case(
        "several-cpus-without-ddp",
        ("trainer.devices", "trainer.strategy"),
        "needs trainer.strategy 'ddp'",
        {"trainer.devices": 2},
    ),
    Case(
        "half-precision-on-cpu",
        ("trainer.precision",),
        "use 'bf16-mixed' or '32-true'",
        {"trainer.precision": "16-mixed"},
    ),
    # Tracking settings MLflow would reject with a traceback
    Case(
        "empty-experiment-name",
        ("mlflow.experiment_name",),
        "name the MLflow experiment",
        {"mlflow.experiment_name": ""},
    ),
    Case(
        "tracking-uri-is-a-folder",
        ("mlflow.tracking_uri",),
        "use sqlite:///<path>/mlflow.db",
        {"mlflow.tracking_uri": "outputs/mlruns"},
    ),
    # -S overrides: rejected before DVC queues or runs anything
    Case("override-unknown-key", ("train.lrr",), "Did you mean 'train.lr'?", command=exp("train.lrr=0.1"), fast=True),
    Case("override-sweep-with-a-wrong-type", ("train.lr",), "Write a number", command=exp("train.lr=0.01,fast")),
    Case(
        "override-sweep-with-an-unknown-model",
        ("model.name",),
        "Did you mean 'cnn'?",
        command=exp("model.name=mlp,cnnn", "train.lr=0.001,0.01"),
    ),
    Case("override-without-value", ("train.lr",), "expected key=value, e.g.", command=exp("train.lr")),
    Case("override-bad-split", ("data.val_fraction",), "keep their sum below 1", command=exp("data.val_fraction=0.9")),
    Case("override-hydra-append-unknown-key", ("train.foo",), "Valid keys here: seed,", command=exp("+train.foo=1")),
    Case(
        "override-run-at-once-no-devices",
        ("trainer.devices",),
        "use 1 or more",
        command=exp("trainer.devices=0", queue=False),
    ),
    # Data files
    Case(
        "data-file-missing",
        ("data/raw/nowhere.csv", "data.dataset"),
        "add the file there",
        {"data.dataset": "data/raw/nowhere.csv", **TABLE},
        fast=True,
    ),
    Case(
        "data-file-empty",
        ("data/raw/empty.csv",),
        "Write the data into it",
        {"data.dataset": "data/raw/empty.csv", **TABLE},
        files=raw_file("empty.csv", ""),
    ),
    Case(
        "data-wrong-delimiter",
        ("data/raw/semi.csv",),
        "is the delimiter right?",
        {"data.dataset": "data/raw/semi.csv", **TABLE},
        files=raw_file("semi.csv", table(three_classes(), sep=";")),
    ),
    Case(
        "data-missing-target-column",
        ("data/raw/t.csv", "data.tabular.target", "'label'"),
        "Columns: a, b, species",
        {"data.dataset": "data/raw/t.csv", "data.tabular.target": "label"},
        files=raw_file("t.csv", table(three_classes())),
        fast=True,
    ),
    Case(
        "data-single-class",
        ("data/raw/t.csv",),
        "add examples of the other classes",
        {"data.dataset": "data/raw/t.csv", **TABLE},
        files=raw_file("t.csv", table([(i, i, "x") for i in range(12)])),
    ),
    Case(
        "data-nan-target",
        ("data/raw/t.csv", "'species'"),
        "Fill or drop those rows",
        {"data.dataset": "data/raw/t.csv", **TABLE},
        files=raw_file("t.csv", table(three_classes()).replace(",z\n", ",\n", 1)),
    ),
    Case(
        "data-text-not-utf8",
        ("data/raw/sms.tsv",),
        "Re-save the file as UTF-8",
        {"data.dataset": "data/raw/sms.tsv", "data.kind": "text"},
        files=raw_file("sms.tsv", messages().encode() + "ham\tcafé crème\n".encode("latin-1")),
        fast=True,
    ),
    Case(
        "data-table-not-utf8",
        ("data/raw/t.csv",),
        "Re-save the file as UTF-8",
        {"data.dataset": "data/raw/t.csv", **TABLE},
        files=raw_file("t.csv", table(three_classes()).replace(",x\n", ",caf\xe9\n").encode("latin-1")),
    ),
    Case(
        "data-corrupt-image",
        ("data/raw/imgs/dog/x.png",),
        "Remove or replace the file",
        {"data.dataset": "data/raw/imgs", "data.image.size": [8, 8]},
        files=image_folder_with_a_corrupt_file,
        fast=True,
    ),
    Case(
        "data-corrupt-npz",
        ("data/raw/images.npz",),
        "numpy.savez(path, x=images, y=labels)",
        {"data.dataset": "data/raw/images.npz"},
        files=raw_file("images.npz", b"PK\x03\x04 cut short"),
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# The repository, and what may not change in it
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Pipeline:
    repo: Path
    pristine: Path  # a copy of the repository as the successful run left it: puts back what a case changed
    queue_status: str


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    root = tmp_path_factory.mktemp("bad_input")
    repo = make_repo_copy(root / "repo")
    run(list(REPRO), repo)
    assert [status for _, status, _ in mlflow_runs(repo)] == ["FINISHED"]
    pristine = root / "pristine"
    shutil.copytree(repo, pristine, symlinks=True)
    return Pipeline(repo, pristine, run(["dvc", "queue", "status"], repo).stdout)


def snapshot(repo: Path) -> dict[str, str]:
    """A digest of every file in the repository but the volatile ones; dvc.lock without the validation stage."""
    digests = {}
    for path in repo.rglob("*"):
        name = path.relative_to(repo).as_posix()
        if path.is_dir() or name.startswith(VOLATILE) or "__pycache__" in path.parts:
            continue
        content = path.read_bytes()
        if name == "dvc.lock":
            lock = yaml.safe_load(content)
            lock["stages"].pop(VALIDATION_STAGE, None)
            content = yaml.safe_dump(lock).encode()
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {
        "removed": sorted(before.keys() - after.keys()),
        "added": sorted(after.keys() - before.keys()),
        "modified": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
    }


def put_back(pipeline: Pipeline, changed: dict[str, list[str]]) -> None:
    """Undo a case's damage, so that the next case starts from the same repository."""
    for name in changed["added"]:
        (pipeline.repo / name).unlink()
    for name in changed["removed"] + changed["modified"]:
        (pipeline.repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pipeline.pristine / name, pipeline.repo / name)


def mlflow_runs(repo: Path) -> list[tuple]:
    """(run id, status, end time) of every run in the repository's store, read-only."""
    with closing(sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True)) as db:
        return sorted(db.execute("SELECT run_uuid, status, end_time FROM runs").fetchall())


def experiment_refs(repo: Path) -> str:
    """DVC keeps queued and finished experiments as git refs under refs/exps."""
    return run(["git", "for-each-ref", "refs/exps"], repo).stdout


def error_message(stderr: str) -> str:
    """From the first `error:` line (the stage's or pipeline.stages.exp's) or DVC's own `ERROR:` on."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lower().startswith("error:")), None)
    assert start is not None, f"no error message in:\n{stderr[-3000:]}"
    return "\n".join(lines[start:])


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    changed: dict[str, list[str]]
    runs_before: list[tuple]
    runs_after: list[tuple]
    refs_before: str
    refs_after: str

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


def attempt(pipeline: Pipeline, case: Case, debug: bool = False) -> Outcome:
    """Apply the bad input, run the command, put the input (and anything the command broke) back."""
    repo = pipeline.repo
    params = (repo / "params.yaml").read_bytes()
    before, runs_before, refs_before = snapshot(repo), mlflow_runs(repo), experiment_refs(repo)
    raw_before = set((repo / "data/raw").rglob("*"))
    try:
        if case.params:
            edit_params(repo, case.params)
        if case.text_edit:
            text = (repo / "params.yaml").read_text()
            assert case.text_edit[0] in text, f"params.yaml no longer contains {case.text_edit[0]!r}"
            (repo / "params.yaml").write_text(text.replace(*case.text_edit, 1))
        if case.files:
            case.files(repo)
        result = run(list(case.command), repo, check=False, timeout=300, PIPELINE_DEBUG="1" if debug else "")
    finally:
        (repo / "params.yaml").write_bytes(params)
        for path in sorted(set((repo / "data/raw").rglob("*")) - raw_before, reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    changed = changes(before, snapshot(repo))
    put_back(pipeline, changed)
    return Outcome(result, changed, runs_before, mlflow_runs(repo), refs_before, experiment_refs(repo))


# ---------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.fast else pytest.mark.slow) for c in CASES])
def test_bad_input_fails_cleanly(pipeline: Pipeline, case: Case) -> None:
    outcome = attempt(pipeline, case)
    result, output = outcome.result, outcome.output

    assert "Traceback" not in output, output[-4000:]
    assert not [r for r in outcome.runs_after if r[1] == "RUNNING"], outcome.runs_after
    assert outcome.runs_after == outcome.runs_before  # no new run, none changed
    assert outcome.refs_after == outcome.refs_before  # no experiment queued or made
    if case.through_exp:
        assert "handing over to dvc exp run" not in result.stdout
        assert run(["dvc", "queue", "status"], pipeline.repo).stdout == pipeline.queue_status

    assert result.returncode != 0, output[-4000:]
    message = error_message(result.stderr)
    for name in case.names:
        assert name in message, (name, message)
    assert case.hint in message, (case.hint, message)

    assert outcome.changed == {"removed": [], "added": [], "modified": []}


def test_debug_flag_shows_the_traceback(pipeline: Pipeline) -> None:
    (case,) = [c for c in CASES if c.id == "unknown-key-in-section"]
    outcome = attempt(pipeline, case, debug=True)

    assert outcome.result.returncode != 0
    assert "Traceback (most recent call last)" in outcome.output
    assert "ParamsError" in outcome.output and "train.lrr" in outcome.output
    assert outcome.runs_after == outcome.runs_before


def test_enough_cases_for_issue_5() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {
        "params.yaml": [c for c in CASES if not c.through_exp and not c.id.startswith("data-")],
        "-S": [c for c in CASES if c.through_exp],
        "data": [c for c in CASES if c.id.startswith("data-")],
    }
    assert all(kinds.values()) and all(any(c.fast for c in group) for group in kinds.values())


def test_validation_stamp_is_constant_and_kept_on_bad_params(tmp_path: Path) -> None:
    """`python -m pipeline.stages.validate --stamp`, the first DVC stage: same bytes every time, kept on failure."""
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    stamp = tmp_path / "outputs" / "params_valid.txt"
    validate = [sys.executable, "-m", "pipeline.stages.validate", "--stamp", str(stamp)]

    run(validate, tmp_path, PYTHONPATH=str(REPO))
    first = stamp.read_bytes()
    edit_params(tmp_path, {"train.lr": 0.5})  # another valid value: the stamp must not change with it
    run(validate, tmp_path, PYTHONPATH=str(REPO))
    assert stamp.read_bytes() == first
    mtime = stamp.stat().st_mtime_ns

    edit_params(tmp_path, {"train.lrr": 0.5})
    failed = run(validate, tmp_path, check=False, PYTHONPATH=str(REPO))
    assert failed.returncode == 2 and "train.lrr: unknown key" in failed.stderr
    assert stamp.read_bytes() == first and stamp.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in stamp.parent.iterdir()) == ["params_valid.txt"]  # no temporary left behind


STAGE_ARGS = {
    "prepare": ["--out", "prepared"],
    "train": ["--prepared", "prepared", "--out", "model", "--checkpoints", "checkpoints"],
    "evaluate": ["--prepared", "prepared", "--model", "model", "--out", "eval"],
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A stage's working directory: a copy of params.yaml and nothing else."""
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def stage(name: str, cwd: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PIPELINE_"))}
    environ["PYTHONPATH"] = str(REPO)
    # Even a stage that got as far as MLflow would only ever touch a store inside the temporary folder.
    environ["MLFLOW_TRACKING_URI"] = sqlite_uri(cwd)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{name}", *(args or STAGE_ARGS[name])],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replace_in_params(workdir: Path, old: str, new: str) -> None:
    path = workdir / "params.yaml"
    text = path.read_text()
    assert old in text, f"params.yaml no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "validate"])
def test_unknown_key_in_params_yaml_exits_2_naming_it(workdir: Path, name: str) -> None:
    replace_in_params(workdir, "\n  lr:", "\n  lrr:")
    result = stage(name, workdir, *(["--params", "params.yaml"] if name == "validate" else []))

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: params.yaml is invalid (1 problem):")
    assert "train.lrr: unknown key. Did you mean 'train.lr'?" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was produced.
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_debug_env_shows_the_traceback(workdir: Path) -> None:
    replace_in_params(workdir, "\n  lr:", "\n  lrr:")
    result = stage("prepare", workdir, PIPELINE_DEBUG="1")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr
    assert "ParamsError" in result.stderr and "train.lrr" in result.stderr


def test_missing_params_yaml_exits_2(tmp_path: Path) -> None:
    result = stage("train", tmp_path)
    assert result.returncode == 2
    assert "params.yaml: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_without_prepared_data_exits_2_naming_meta_json(workdir: Path) -> None:
    result = stage("train", workdir)
    assert result.returncode == 2
    assert "prepared/meta.json: not found" in result.stderr
    assert "prepare" in result.stderr  # says what to run
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists()


def test_train_with_unreachable_tracking_server_fails_fast(workdir: Path, prepared_copy: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    replace_in_params(workdir, "tracking_uri: null", f"tracking_uri: {uri}")

    start = time.monotonic()
    result = stage("train", workdir, timeout=60)
    elapsed = time.monotonic() - start

    assert result.returncode == 2, result.stderr
    assert elapsed < 15
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists() and not (workdir / "checkpoints").exists()


def test_evaluate_with_unreachable_tracking_server_fails_fast(workdir: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    result = stage("evaluate", workdir, timeout=60, MLFLOW_TRACKING_URI=uri)
    assert time.monotonic() - start < 15
    assert result.returncode == 2, result.stderr
    assert uri in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_without_a_trained_model_exits_2(workdir: Path, prepared_copy: Path) -> None:
    result = stage("evaluate", workdir)
    assert result.returncode == 2, result.stderr
    assert "model/mlflow_run.json: not found" in result.stderr
    assert "train" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "eval").exists()
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow  # a real training in a subprocess; the NaN check itself is unit-tested in-process
def test_nan_loss_stops_training_at_once_and_fails_the_run(workdir: Path) -> None:
    """An absurd learning rate makes the loss non-finite within a few steps: exit 2, epoch and step named, FAILED."""
    from mlflow.tracking import MlflowClient

    run(stage_command("prepare", "--out", "prepared"), workdir, PYTHONPATH=str(REPO))
    edit_params(
        workdir,
        {
            "model.name": "mlp",
            "train.lr": 1.0e30,
            "train.optimizer": "sgd",
            "train.max_epochs": 5,
            "train.scheduler": "none",
            "trainer.progress_bar": False,
        },
    )
    result = run(
        stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"),
        workdir,
        check=False,
        PYTHONPATH=str(REPO),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "training loss is nan" in result.stderr or "training loss is inf" in result.stderr
    assert "at epoch 0, step" in result.stderr and "train.lr" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists()
    client = MlflowClient(sqlite_uri(workdir))
    (failed,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert failed.info.status == "FAILED"


def test_credentials_in_the_environment_are_never_logged(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-4f1c",
        "AWS_ACCESS_KEY_ID": "AKIA-secret-77",
        "MLFLOW_TRACKING_TOKEN": "mlflow-token-9d2e",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-31",
    }
    run(stage_command("prepare", "--out", "prepared"), workdir, PYTHONPATH=str(REPO))
    edit_params(workdir, {"model.name": "mlp", "train.max_epochs": 1, "trainer.progress_bar": False})
    run(
        stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"),
        workdir,
        PYTHONPATH=str(REPO),
        **secrets,
    )
    client = MlflowClient(sqlite_uri(workdir))
    (logged,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    recorded = " ".join(
        [*logged.data.params.values(), *logged.data.tags.values(), *logged.data.params, *logged.data.tags]
    )
    for name, value in secrets.items():
        assert value not in recorded and name not in recorded


def sqlite_store(path: Path) -> bytes:
    """A real MLflow store with one run; returns its bytes."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{path}")
    run_ = client.create_run(client.create_experiment("digits"))
    client.set_terminated(run_.info.run_id)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("empty", "is an empty file (0 bytes), not a database"),
        ("garbage-header", "is not an SQLite database"),
        ("half-truncated", "is damaged (database disk image is malformed)"),
    ],
)
def test_damaged_tracking_store_exits_2_and_is_left_as_it_was(
    workdir: Path, prepared_copy: Path, damage: str, phrase: str
) -> None:
    good = sqlite_store(workdir / "good.db")
    bad = {
        "empty": b"",
        "garbage-header": b"not a database at all " * 64 + good[2048:],
        "half-truncated": good[: len(good) // 2],
    }[damage]
    (workdir / "mlflow.db").write_bytes(bad)

    result = stage("train", workdir)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: MLflow tracking store {workdir / 'mlflow.db'} {phrase}"), result.stderr
    assert "move it aside to start a new store" in result.stderr
    assert (workdir / "mlflow.db").read_bytes() == bad
    assert not (workdir / "model").exists() and not (workdir / "checkpoints").exists()


def write_csv(name: str, text: str) -> Callable[[Path], None]:
    def setup(workdir: Path) -> None:
        (workdir / name).write_text(text, encoding="utf-8")

    return setup


def write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(workdir: Path) -> None:
        (workdir / name).write_bytes(data)

    return setup


def image_folder_with_corrupt_file(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    from PIL import Image

    for name in ("cat", "dog"):
        (workdir / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(
                workdir / "imgs" / name / f"{i}.png"
            )
    (workdir / "imgs" / "dog" / "x.png").write_bytes(b"this is not a PNG file at all" * 10)


def npz_without_labels(workdir: Path) -> None:
    np.savez(workdir / "images.npz", x=np.zeros((12, 8, 8), np.float32), labels=np.arange(12) % 3)


def npz_images(x: np.ndarray, y: np.ndarray | None = None) -> Callable[[Path], None]:
    def setup(workdir: Path) -> None:
        np.savez(workdir / "images.npz", x=x, y=np.arange(len(x)) % 3 if y is None else y)

    return setup


def digits_with_nan(n: int = 12) -> np.ndarray:
    x = np.ones((n, 8, 8), np.float32)
    x[5, 2, 2] = np.nan
    return x


def image_folder_with_bomb(workdir: Path) -> None:
    """Class folders of small PNGs, and one whose header claims 15000 x 15000 pixels (a decompression bomb)."""
    import struct
    import zlib

    image_folder_with_corrupt_file(workdir)
    (workdir / "imgs" / "dog" / "x.png").unlink()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (workdir / "imgs" / "dog" / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 15000, 15000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


TABULAR = {"data.tabular.target": "species"}
TEXT = {"data.kind": "text"}


@dataclass
class DataCase:
    id: str
    setup: Callable[[Path], None]
    params: dict[str, object]
    names: tuple[str, ...]  # the file (or key) the message must name
    phrase: str  # and the helpful part
    sentinel: bool = False  # a previous prepared/ exists and must survive unchanged


DATA_CASES = [
    DataCase(
        "missing-file",
        lambda w: None,
        {"data.dataset": "nowhere.csv", **TABULAR},
        ("nowhere.csv", "data.dataset"),
        "not found",
    ),
    DataCase(
        "empty-csv",
        write_csv("empty.csv", ""),
        {"data.dataset": "empty.csv", **TABULAR},
        ("empty.csv",),
        "cannot be read",
    ),
    DataCase(
        "header-only-csv",
        write_csv("header.csv", "a,b,species\n"),
        {"data.dataset": "header.csv", **TABULAR},
        ("header.csv",),
        "0 rows",
    ),
    DataCase(
        "semicolon-delimiter",
        write_csv("semi.csv", table(three_classes(), "a;b;species").replace(",", ";")),
        {"data.dataset": "semi.csv", **TABULAR},
        ("semi.csv",),
        "delimiter",
    ),
    DataCase(
        "missing-target-column",
        write_csv("t.csv", table(three_classes())),
        {"data.dataset": "t.csv", "data.tabular.target": "label"},
        ("t.csv", "'label'", "data.tabular.target"),
        "no target column",
        sentinel=True,
    ),
    DataCase(
        "target-with-nan",
        write_csv("t.csv", table(three_classes()).replace(",z\n", ",\n", 1)),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'species'", "file lines [4]"),
        "Fill or drop those rows",
    ),
    DataCase(
        "single-class",
        write_csv("t.csv", table([(i, i, "x") for i in range(12)])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv",),
        "at least two classes",
    ),
    DataCase(
        "class-with-two-examples",
        write_csv("t.csv", table([*three_classes(), (1, 1, "w"), (2, 2, "w")])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'w': 2"),
        "fewer than 3 examples",
    ),
    DataCase(
        "class-with-one-example",
        write_csv("t.csv", table([*three_classes(), (1, 1, "w")])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'w': 1"),
        "fewer than 3 examples",
    ),
    DataCase(
        "text-empty-message",
        write_csv("sms.tsv", messages() + "ham\t   \n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "[13]"),
        "empty message",
    ),
    DataCase(
        "text-message-without-label",
        write_csv("sms.tsv", messages(2) + "\tsomebody forgot the label\n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "data row(s) [3]"),
        "have no label",
    ),
    DataCase(
        "text-not-utf8",
        write_bytes("sms.tsv", messages().encode() + "ham\tcafé crème\n".encode("latin-1")),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv",),
        "not UTF-8",
    ),
    DataCase(
        "text-line-without-tab",
        write_csv("sms.tsv", messages(2) + "ham just text, no tab\n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "line 3"),
        "between label and text",
    ),
    DataCase(
        "text-header-without-text-column",
        write_csv("sms.csv", "label,body\n" + messages().replace("\t", ",")),
        {"data.dataset": "sms.csv", **TEXT, "data.text.text_column": "message", "data.text.label_column": "label"},
        ("sms.csv", "message"),
        "text_column",
    ),
    DataCase(
        "corrupt-image",
        image_folder_with_corrupt_file,
        {"data.dataset": "imgs", "data.image.size": [8, 8]},
        ("x.png",),
        "not a readable image",
    ),
    DataCase(
        "npz-without-y",
        npz_without_labels,
        {"data.dataset": "images.npz"},
        ("images.npz", "y"),
        "save images as `x` and labels as `y`",
    ),
    DataCase(
        "table-infinite-value",
        write_csv("t.csv", table(three_classes()).replace("\n4,2.0,", "\n4,-inf,")),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "column 'b'", "file lines [6]"),
        "infinite value(s)",
    ),
    DataCase(
        "table-value-beyond-float32",
        write_csv("t.csv", table(three_classes()).replace("\n5,2.5,", "\n5,1e308,")),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "column 'b'", "file lines [7]"),
        "beyond ±3.40e+38",
    ),
    DataCase(
        "text-no-token-after-cleaning",
        write_csv("sms.tsv", messages().replace("message number", "?!")),
        {"data.dataset": "sms.tsv", **TEXT, "data.text.strip_punctuation": True, "data.text.strip_numbers": True},
        ("sms.tsv", "data.text"),
        "no token is left",
    ),
    DataCase(
        "npz-without-images",
        npz_images(np.zeros((0, 8, 8)), np.zeros(0)),
        {"data.dataset": "images.npz"},
        ("images.npz",),
        "no images in it",
    ),
    DataCase(
        "npz-of-strings",
        npz_images(np.full((12, 2, 2), "a")),
        {"data.dataset": "images.npz"},
        ("images.npz",),
        "not numbers",
    ),
    DataCase(
        "npz-with-nan-pixels",
        npz_images(digits_with_nan()),
        {"data.dataset": "images.npz"},
        ("images.npz", "index [5]"),
        "NaN or infinite pixel values",
    ),
    DataCase(
        "decompression-bomb-image",
        image_folder_with_bomb,
        {"data.dataset": "imgs", "data.image.size": [8, 8]},
        ("bomb.png",),
        "too large to read safely",
    ),
]


def prepare_stage(workdir: Path):
    return run(
        stage_command("prepare", "--out", "prepared"),
        workdir,
        check=False,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_bad_data_exits_2_naming_the_file(workdir: Path, case: DataCase) -> None:
    case.setup(workdir)
    edit_params(workdir, case.params)
    if case.sentinel:
        (workdir / "prepared").mkdir()
        (workdir / "prepared" / "meta.json").write_text('{"sentinel": true}\n')
    before = sorted(p.name for p in workdir.iterdir())

    result = prepare_stage(workdir)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # The message itself (not prepare's warning about files outside data/raw, which names the file too).
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr
    error = result.stderr[result.stderr.index("error: ") :]
    for name in case.names:
        assert name in error, (name, error)
    assert case.phrase in error, error
    # Nothing produced, nothing half-written, no temporary sibling; a previous output survives as it was.
    assert sorted(p.name for p in workdir.iterdir()) == before
    if case.sentinel:
        assert [p.name for p in (workdir / "prepared").iterdir()] == ["meta.json"]
        assert (workdir / "prepared" / "meta.json").read_text() == '{"sentinel": true}\n'
    else:
        assert not (workdir / "prepared").exists()


def test_train_refuses_a_model_that_cannot_read_the_data(workdir: Path) -> None:
    prepare(DataParams(dataset="wine"), workdir / "prepared")
    edit_params(workdir, {"data.dataset": "wine", "model.name": "cnn"})

    start = time.monotonic()
    result = run(
        stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "checkpoints"),
        workdir,
        check=False,
        timeout=120,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )
    elapsed = time.monotonic() - start

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "model.name 'cnn' cannot take tabular data" in result.stderr, result.stderr
    assert "use model.name: mlp" in result.stderr
    assert elapsed < 20  # refused before the heavy imports, let alone training
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()
    assert not (workdir / "model").exists() and not (workdir / "checkpoints").exists()


def test_messages_without_label_are_counted(workdir: Path) -> None:
    (workdir / "sms.tsv").write_text(messages(2) + "\tno label\n" + messages(3) + "  \tnor here\n" + messages())
    edit_params(workdir, {"data.dataset": "sms.tsv", **TEXT})
    result = prepare_stage(workdir)
    assert result.returncode == 2
    assert "2 message(s) have no label (first at data row(s) [3, 7])" in result.stderr, result.stderr


def test_constant_feature_columns_are_named(workdir: Path) -> None:
    rows = [(i, 7, "same", ["x", "y", "z"][i % 3]) for i in range(30)]
    (workdir / "t.csv").write_text(table(rows, header="a,b,c,species"))
    edit_params(workdir, {"data.dataset": "t.csv", **TABULAR})
    result = prepare_stage(workdir)
    assert result.returncode == 0, result.stderr
    assert "warning: t.csv: column(s) b, c hold one value in every row" in result.stderr, result.stderr


def test_messages_empty_after_cleaning_are_counted(workdir: Path) -> None:
    (workdir / "sms.tsv").write_text(messages(24) + "ham\t!!!\nspam\t???\n" * 6)
    edit_params(workdir, {"data.dataset": "sms.tsv", **TEXT, "data.text.strip_punctuation": True})
    result = prepare_stage(workdir)
    assert result.returncode == 0, result.stderr
    assert "warning: sms.tsv:" in result.stderr and "message(s) hold no token after cleaning" in result.stderr
