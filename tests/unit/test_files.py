"""Outputs are replaced atomically, and never at the cost of files the command did not write."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.files import TMP_MARK, UnsafeOutput, atomic_path


def test_a_file_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_failure_keeps_the_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:  # noqa: PT012 (a write cut short)
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.parametrize("contents", [{}, {"notes.txt": "mine"}])
def test_a_file_never_replaces_a_folder(tmp_path: Path, contents: dict[str, str]) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    for name, text in contents.items():
        (folder / name).write_text(text)
    with pytest.raises(UnsafeOutput, match="results"), atomic_path(folder) as tmp:
        tmp.write_text("a,b\n")
    assert folder.is_dir() and {p.name: p.read_text() for p in folder.iterdir()} == contents


def test_a_folder_with_foreign_files_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    (folder / "my_notes.md").write_text("keep me")
    with pytest.raises(UnsafeOutput, match=re.escape("my_notes.md")), atomic_path(folder, ["metrics.json"]):
        pytest.fail("the body must not run")
    assert (folder / "my_notes.md").read_text() == "keep me"


def test_a_folder_of_own_files_is_replaced_keeping_dvcs_gitignore(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text("old")
    (folder / "stale.png").write_text("old")  # written by an earlier configuration of the same stage
    (folder / ".gitignore").write_text("/stale.png\n")
    with atomic_path(folder, ["metrics.json", "stale.png"]) as tmp:
        tmp.mkdir()
        (tmp / "metrics.json").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "metrics.json"]
    assert (folder / "metrics.json").read_text() == "new"


def test_the_working_directory_is_never_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for name in (".", "./"):
        with pytest.raises(UnsafeOutput), atomic_path(name):
            pytest.fail("the body must not run")
    assert (tmp_path / "keep.txt").is_file()


def test_temporaries_of_a_killed_process_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".prepared{TMP_MARK}{int(dead.stdout)}-abc" / "prepared"
    stale.mkdir(parents=True)
    (stale / "train_x.npy").write_bytes(b"0" * 1000)
    live = tmp_path / f".prepared{TMP_MARK}{os.getpid()}-xyz"  # a concurrent writer in this very process
    live.mkdir()
    with atomic_path(tmp_path / "prepared", ["meta.json"]) as tmp:
        tmp.mkdir()
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "prepared"]
