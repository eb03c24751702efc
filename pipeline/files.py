"""Writing stage outputs so that a failed stage never leaves a half-written file a later stage could read, and a
command never deletes what it did not write."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

TMP_MARK = ".tmp-"  # temporary siblings are named .<name>.tmp-<pid>-<random>
# DVC writes a .gitignore into folders that hold its outputs; a replaced folder keeps it.
KEPT_IN_FOLDERS = (".gitignore",)


class UnsafeOutput(PipelineError):
    """Writing the output would delete something this command did not write."""


@contextmanager
def atomic_path(path: str | Path, replaceable: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a folder); it replaces `path` only on success.

    A folder is replaced only if everything in it is either written anew or named in `replaceable` (the files the
    caller's stage writes in some configuration): anything else in it stops the command before any work, so an
    output path that points at a user's folder (`--out data/raw`, `--out .`) never loses it. A file never replaces
    a folder. Temporary siblings left by a killed process are removed on the way in."""
    path = Path(path)
    if not path.name or (path.is_symlink() and path.is_dir()):
        raise UnsafeOutput(f"{path}: not a usable output path; name a file or a new folder inside the repository.")
    foreign = _foreign_entries(path, set(replaceable))
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UnsafeOutput(
            f"{path}: is a folder holding files this command did not write ({shown}); it is left as "
            "it is. Name a new or empty folder, or a file path, as the output."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not tmp.is_dir():
            raise UnsafeOutput(f"{path}: is a folder; give a file path as the output.")
        if path.is_dir():
            for name in KEPT_IN_FOLDERS:
                if (path / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(path / name, tmp / name)
            appeared = _foreign_entries(path, set(replaceable) | {p.name for p in tmp.iterdir()})
            if appeared:  # something appeared in the folder while the command ran
                raise UnsafeOutput(
                    f"{path}: files appeared in it while this command ran ({', '.join(appeared)}); it is left as it is."
                )
            shutil.rmtree(path)
        elif tmp.is_dir() and (path.exists() or path.is_symlink()):
            path.unlink()  # os.replace cannot put a folder where a file was
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _foreign_entries(path: Path, replaceable: set[str]) -> list[str]:
    """Entries of folder `path` that are neither replaceable nor kept: what replacing it would delete."""
    if not path.is_dir() or path.is_symlink():
        return []
    return [p.name for p in path.iterdir() if p.name not in replaceable and p.name not in KEPT_IN_FOLDERS]


def remove_stale_temporaries(path: Path) -> None:
    """Temporary siblings of `path` whose process is gone (a SIGKILL or power loss mid-write leaves them)."""
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        pid = tmp.name[len(f".{path.name}{TMP_MARK}") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
