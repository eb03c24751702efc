"""Bad data stops `python -m pipeline.prepare` with exit code 2 and one message that names the file and the fix.

Each case writes its data into a fresh working directory holding a copy of params.yaml, points `data.*` at it and
runs the stage as a user would. Nothing may be left behind: no `prepared` folder (or the previous one untouched),
no temporary sibling of it.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pipeline.config import DataParams
from pipeline.prepare import prepare
from tests.conftest import REPO, edit_params, run


def write_csv(name: str, text: str) -> Callable[[Path], None]:
    def setup(workdir: Path) -> None:
        (workdir / name).write_text(text, encoding="utf-8")
    return setup


def write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(workdir: Path) -> None:
        (workdir / name).write_bytes(data)
    return setup


def table(rows: list[tuple], header: str = "a,b,species") -> str:
    return header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)


def three_classes(n: int = 12) -> list[tuple]:
    return [(i, i * 0.5, ["x", "y", "z"][i % 3]) for i in range(n)]


def messages(n: int = 12) -> str:
    return "".join(f"{['ham', 'spam'][i % 2]}\tmessage number {i}\n" for i in range(n))


def image_folder_with_corrupt_file(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    from PIL import Image

    for name in ("cat", "dog"):
        (workdir / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(
                workdir / "imgs" / name / f"{i}.png")
    (workdir / "imgs" / "dog" / "x.png").write_bytes(b"this is not a PNG file at all" * 10)


def npz_without_labels(workdir: Path) -> None:
    np.savez(workdir / "images.npz", x=np.zeros((12, 8, 8), np.float32), labels=np.arange(12) % 3)


TABULAR = {"data.tabular.target": "species"}
TEXT = {"data.kind": "text"}


@dataclass
class Case:
    id: str
    setup: Callable[[Path], None]
    params: dict[str, object]
    names: tuple[str, ...]  # the file (or key) the message must name
    phrase: str  # and the helpful part
    sentinel: bool = False  # a previous prepared/ exists and must survive unchanged


CASES = [
    Case("missing-file", lambda w: None, {"data.dataset": "nowhere.csv", **TABULAR},
         ("nowhere.csv", "data.dataset"), "not found"),
    Case("empty-csv", write_csv("empty.csv", ""), {"data.dataset": "empty.csv", **TABULAR},
         ("empty.csv",), "cannot be read"),
    Case("header-only-csv", write_csv("header.csv", "a,b,species\n"), {"data.dataset": "header.csv", **TABULAR},
         ("header.csv",), "0 rows"),
    Case("semicolon-delimiter", write_csv("semi.csv", table(three_classes(), "a;b;species").replace(",", ";")),
         {"data.dataset": "semi.csv", **TABULAR}, ("semi.csv",), "delimiter"),
    Case("missing-target-column", write_csv("t.csv", table(three_classes())),
         {"data.dataset": "t.csv", "data.tabular.target": "label"}, ("t.csv", "'label'", "data.tabular.target"),
         "no target column", sentinel=True),
    Case("target-with-nan", write_csv("t.csv", table(three_classes()).replace(",z\n", ",\n", 1)),
         {"data.dataset": "t.csv", **TABULAR}, ("t.csv", "'species'", "file lines [4]"), "Fill or drop those rows"),
    Case("single-class", write_csv("t.csv", table([(i, i, "x") for i in range(12)])),
         {"data.dataset": "t.csv", **TABULAR}, ("t.csv",), "at least two classes"),
    Case("class-with-two-examples", write_csv("t.csv", table(three_classes() + [(1, 1, "w"), (2, 2, "w")])),
         {"data.dataset": "t.csv", **TABULAR}, ("t.csv", "'w': 2"), "fewer than 3 examples"),
    Case("class-with-one-example", write_csv("t.csv", table(three_classes() + [(1, 1, "w")])),
         {"data.dataset": "t.csv", **TABULAR}, ("t.csv", "'w': 1"), "fewer than 3 examples"),
    Case("text-empty-message", write_csv("sms.tsv", messages() + "ham\t   \n" + messages()),
         {"data.dataset": "sms.tsv", **TEXT}, ("sms.tsv", "[13]"), "empty message"),
    Case("text-message-without-label", write_csv("sms.tsv", messages(2) + "\tsomebody forgot the label\n" + messages()),
         {"data.dataset": "sms.tsv", **TEXT}, ("sms.tsv", "data row(s) [3]"), "have no label"),
    Case("text-not-utf8", write_bytes("sms.tsv", messages().encode() + "ham\tcafé crème\n".encode("latin-1")),
         {"data.dataset": "sms.tsv", **TEXT}, ("sms.tsv",), "not UTF-8"),
    Case("text-line-without-tab", write_csv("sms.tsv", messages(2) + "ham just text, no tab\n" + messages()),
         {"data.dataset": "sms.tsv", **TEXT}, ("sms.tsv", "line 3"), "between label and text"),
    Case("text-header-without-text-column", write_csv("sms.csv", "label,body\n" + messages().replace("\t", ",")),
         {"data.dataset": "sms.csv", **TEXT, "data.text.text_column": "message", "data.text.label_column": "label"},
         ("sms.csv", "message"), "text_column"),
    Case("corrupt-image", image_folder_with_corrupt_file, {"data.dataset": "imgs", "data.image.size": [8, 8]},
         ("x.png",), "not a readable image"),
    Case("npz-without-y", npz_without_labels, {"data.dataset": "images.npz"}, ("images.npz", "y"),
         "save images as `x` and labels as `y`"),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def prepare_stage(workdir: Path):
    return run([sys.executable, "-m", "pipeline.prepare", "--out", "prepared"], workdir, check=False,
               PYTHONPATH=str(REPO), PIPELINE_DEBUG="")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_data_exits_2_naming_the_file(workdir: Path, case: Case) -> None:
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
    error = result.stderr[result.stderr.index("error: "):]
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
    edit_params(workdir, {"model.name": "cnn"})

    start = time.monotonic()
    result = run([sys.executable, "-m", "pipeline.train", "--prepared", "prepared", "--out", "model",
                  "--checkpoints", "checkpoints"], workdir, check=False, timeout=120, PYTHONPATH=str(REPO),
                 PIPELINE_DEBUG="")
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
