"""The stages' console lines: INFO to stdout, warnings to stderr, from global rank zero only."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from pipeline import console
from tests.helpers import REPO, stage_env


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = console.get_logger("pipeline.stages.example")
    log.info("example: a summary line")
    log.warning("example: warning: something about the data")
    captured = capsys.readouterr()
    assert captured.out == "example: a summary line\n"
    assert captured.err == "example: warning: something about the data\n"


def test_the_handler_is_installed_once() -> None:
    console.get_logger("pipeline.a")
    console.get_logger("pipeline.b")
    handlers = logging.getLogger("pipeline").handlers  # pytest adds its own capture handlers beside ours
    assert [type(h).__name__ for h in handlers].count("_RankZeroConsole") == 1


@pytest.mark.parametrize(
    ("rank_env", "shown"),
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"RANK": "3"}, False), ({"SLURM_PROCID": "0"}, True)],
)
def test_only_global_rank_zero_speaks(rank_env: dict[str, str], shown: bool) -> None:
    """A DDP process other than rank zero (as launchers mark them) prints nothing: "resuming from ..." once, not
    once per process. In a fresh interpreter, as a launched process would be, before Lightning is imported."""
    code = (
        "from pipeline import console; log = console.get_logger('pipeline.training.checkpoints'); "
        "log.info('train: resuming'); log.warning('train: warning: w')"
    )
    env = {k: v for k, v in stage_env(PYTHONPATH=str(REPO)).items() if k not in console.RANK_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, **rank_env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == (("train: resuming\n", "train: warning: w\n") if shown else ("", ""))
