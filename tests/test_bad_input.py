"""Issue 5: malformed params.yaml, `-S` overrides and data files, each through the command a user would run.

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
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, edit_params, make_repo_copy, run

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
