"""trainer.num_threads: the cores of this process divided among the processes that share them.

Running queued experiments are real processes here: stand-ins whose command line is the one DVC gives its
experiment runners (`dvc exp exec-run --infofile <repo>/.dvc/tmp/exps/run/<rev>/<rev>.run`), found in /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ParamsError, load_params
from pipeline.training import threads
from tests.helpers import REPO

linux_only = pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="counts processes in /proc")


def runner_args(root: Path, rev: str) -> list[str]:
    return ["dvc", "exp", "exec-run", "--infofile", str(root / ".dvc" / "tmp" / "exps" / "run" / rev / f"{rev}.run")]


def start_runner(root: Path, rev: str, code: str = "import time; time.sleep(120)") -> subprocess.Popen:
    """A process whose command line is an experiment runner's (python ignores the arguments after -c's code)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *runner_args(root, rev)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DVC_ROOT": str(root)},
    )


def wait_listed(proc: subprocess.Popen) -> None:
    """Until /proc shows the runner's arguments (right after fork it still shows the parent's)."""
    deadline = time.monotonic() + 30
    while "exec-run" not in threads._cmdline(str(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def runners(tmp_path: Path):
    started: list[subprocess.Popen] = []

    def start(root: Path, rev: str, code: str = "import time; time.sleep(120)") -> subprocess.Popen:
        proc = start_runner(root, rev, code)
        started.append(proc)
        wait_listed(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_number_is_used_as_given() -> None:
    assert threads.resolve_num_threads(3) == 3
    assert threads.resolve_num_threads(1, processes_per_node=8, workers=4) == 1


def test_auto_divides_the_available_cores_among_ddp_processes_and_workers(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # no experiment running there
    cores = threads.available_cores()
    assert threads.resolve_num_threads("auto") == cores
    assert threads.resolve_num_threads("auto", processes_per_node=2) == max(1, cores // 2)
    assert threads.resolve_num_threads("auto", processes_per_node=2, workers=2) == max(1, cores // 4)
    assert threads.resolve_num_threads("auto", processes_per_node=cores * 4) == 1  # never 0


def test_a_cgroup_cpu_quota_caps_the_cores(monkeypatch, tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", cpu_max)
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert threads.available_cores() == affinity
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: one whole core
    assert threads.available_cores() == 1
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert threads.available_cores() == 1


@linux_only
def test_counts_the_running_experiments_of_this_repository_only(runners, tmp_path: Path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    assert threads.running_experiments(repo) == 1  # a plain `dvc repro`, nothing queued
    runners(repo, "a" * 40)
    runners(repo, "b" * 40)
    runners(other, "c" * 40)  # another repository's experiment is not ours to share with
    assert threads.running_experiments(repo) == 3  # two queued experiments, and this process beside them
    assert threads.running_experiments(other) == 2


@linux_only
def test_a_stage_inside_a_queued_experiment_counts_itself_once(runners, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    runners(repo, "a" * 40)
    # The stage is a child of its experiment's runner, and reads the repository from $DVC_ROOT as DVC sets it.
    stage = (
        "import subprocess, sys; print(subprocess.run([sys.executable, '-c', 'from pipeline.training.threads import "
        'running_experiments, resolve_num_threads; print(running_experiments(), resolve_num_threads("auto"))\'],'
        " capture_output=True, text=True).stdout)"
    )
    inside = runners(repo, "b" * 40, stage)
    out, _ = inside.communicate(timeout=120)
    experiments, num_threads = map(int, out.split())
    assert experiments == 2
    assert num_threads == max(1, threads.available_cores() // 2)


def test_configure_threads_sizes_torch_and_the_blas_pools() -> None:
    code = (
        "import numpy; from pipeline.training.threads import configure_threads; n = configure_threads('auto', "
        "processes_per_node=1024); import torch; from threadpoolctl import threadpool_info; "
        "print(n, torch.get_num_threads(), max(p['num_threads'] for p in threadpool_info()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
    ).stdout
    assert out.split() == ["1", "1", "1"]


def test_devices_per_node() -> None:
    assert threads.devices_per_node("cpu", 2) == 2
    assert threads.devices_per_node("cpu", [0, 1, 2]) == 3
    assert threads.devices_per_node("cpu", "auto") == 1


@pytest.mark.parametrize("value", ["0", "-2", "many", "true", "1.5"])
def test_bad_num_threads_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ParamsError, match=r"trainer\.num_threads"):
        load_params(REPO / "params.yaml", [f"trainer.num_threads={value}"])


def test_num_threads_accepts_auto_and_a_number() -> None:
    assert load_params(REPO / "params.yaml").trainer.num_threads == "auto"
    assert load_params(REPO / "params.yaml", ["trainer.num_threads=2"]).trainer.num_threads == 2
