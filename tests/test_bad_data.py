"""Bad data stops `python -m pipeline.stages.prepare` with exit code 2 and one message that names the file and the fix.

Each case writes its data into a fresh working directory holding a copy of params.yaml, points `data.*` at it and
runs the stage as a user would. Nothing may be left behind: no `prepared` folder (or the previous one untouched),
no temporary sibling of it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataParams
from pipeline.stages.prepare import prepare
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
class Case:
    id: str
    setup: Callable[[Path], None]
    params: dict[str, object]
    names: tuple[str, ...]  # the file (or key) the message must name
    phrase: str  # and the helpful part
    sentinel: bool = False  # a previous prepared/ exists and must survive unchanged


CASES = [
    Case(
        "missing-file",
        lambda w: None,
        {"data.dataset": "nowhere.csv", **TABULAR},
        ("nowhere.csv", "data.dataset"),
        "not found",
    ),
    Case(
        "empty-csv",
        write_csv("empty.csv", ""),
        {"data.dataset": "empty.csv", **TABULAR},
        ("empty.csv",),
        "cannot be read",
    ),
    Case(
        "header-only-csv",
        write_csv("header.csv", "a,b,species\n"),
        {"data.dataset": "header.csv", **TABULAR},
        ("header.csv",),
        "0 rows",
    ),
    Case(
        "semicolon-delimiter",
        write_csv("semi.csv", table(three_classes(), "a;b;species").replace(",", ";")),
        {"data.dataset": "semi.csv", **TABULAR},
        ("semi.csv",),
        "delimiter",
    ),
    Case(
        "missing-target-column",
        write_csv("t.csv", table(three_classes())),
        {"data.dataset": "t.csv", "data.tabular.target": "label"},
        ("t.csv", "'label'", "data.tabular.target"),
        "no target column",
        sentinel=True,
    ),
    Case(
        "target-with-nan",
        write_csv("t.csv", table(three_classes()).replace(",z\n", ",\n", 1)),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'species'", "file lines [4]"),
        "Fill or drop those rows",
    ),
    Case(
        "single-class",
        write_csv("t.csv", table([(i, i, "x") for i in range(12)])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv",),
        "at least two classes",
    ),
    Case(
        "class-with-two-examples",
        write_csv("t.csv", table([*three_classes(), (1, 1, "w"), (2, 2, "w")])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'w': 2"),
        "fewer than 3 examples",
    ),
    Case(
        "class-with-one-example",
        write_csv("t.csv", table([*three_classes(), (1, 1, "w")])),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "'w': 1"),
        "fewer than 3 examples",
    ),
    Case(
        "text-empty-message",
        write_csv("sms.tsv", messages() + "ham\t   \n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "[13]"),
        "empty message",
    ),
    Case(
        "text-message-without-label",
        write_csv("sms.tsv", messages(2) + "\tsomebody forgot the label\n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "data row(s) [3]"),
        "have no label",
    ),
    Case(
        "text-not-utf8",
        write_bytes("sms.tsv", messages().encode() + "ham\tcafé crème\n".encode("latin-1")),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv",),
        "not UTF-8",
    ),
    Case(
        "text-line-without-tab",
        write_csv("sms.tsv", messages(2) + "ham just text, no tab\n" + messages()),
        {"data.dataset": "sms.tsv", **TEXT},
        ("sms.tsv", "line 3"),
        "between label and text",
    ),
    Case(
        "text-header-without-text-column",
        write_csv("sms.csv", "label,body\n" + messages().replace("\t", ",")),
        {"data.dataset": "sms.csv", **TEXT, "data.text.text_column": "message", "data.text.label_column": "label"},
        ("sms.csv", "message"),
        "text_column",
    ),
    Case(
        "corrupt-image",
        image_folder_with_corrupt_file,
        {"data.dataset": "imgs", "data.image.size": [8, 8]},
        ("x.png",),
        "not a readable image",
    ),
    Case(
        "npz-without-y",
        npz_without_labels,
        {"data.dataset": "images.npz"},
        ("images.npz", "y"),
        "save images as `x` and labels as `y`",
    ),
    Case(
        "table-infinite-value",
        write_csv("t.csv", table(three_classes()).replace("\n4,2.0,", "\n4,-inf,")),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "column 'b'", "file lines [6]"),
        "infinite value(s)",
    ),
    Case(
        "table-value-beyond-float32",
        write_csv("t.csv", table(three_classes()).replace("\n5,2.5,", "\n5,1e308,")),
        {"data.dataset": "t.csv", **TABULAR},
        ("t.csv", "column 'b'", "file lines [7]"),
        "beyond ±3.40e+38",
    ),
    Case(
        "text-no-token-after-cleaning",
        write_csv("sms.tsv", messages().replace("message number", "?!")),
        {"data.dataset": "sms.tsv", **TEXT, "data.text.strip_punctuation": True, "data.text.strip_numbers": True},
        ("sms.tsv", "data.text"),
        "no token is left",
    ),
    Case(
        "npz-without-images",
        npz_images(np.zeros((0, 8, 8)), np.zeros(0)),
        {"data.dataset": "images.npz"},
        ("images.npz",),
        "no images in it",
    ),
    Case(
        "npz-of-strings",
        npz_images(np.full((12, 2, 2), "a")),
        {"data.dataset": "images.npz"},
        ("images.npz",),
        "not numbers",
    ),
    Case(
        "npz-with-nan-pixels",
        npz_images(digits_with_nan()),
        {"data.dataset": "images.npz"},
        ("images.npz", "index [5]"),
        "NaN or infinite pixel values",
    ),
    Case(
        "decompression-bomb-image",
        image_folder_with_bomb,
        {"data.dataset": "imgs", "data.image.size": [8, 8]},
        ("bomb.png",),
        "too large to read safely",
    ),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def prepare_stage(workdir: Path):
    return run(
        [sys.executable, "-m", "pipeline.stages.prepare", "--out", "prepared"],
        workdir,
        check=False,
        PYTHONPATH=str(REPO),
        PIPELINE_DEBUG="",
    )


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
        [
            sys.executable,
            "-m",
            "pipeline.stages.train",
            "--prepared",
            "prepared",
            "--out",
            "model",
            "--checkpoints",
            "checkpoints",
        ],
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
