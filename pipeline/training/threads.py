"""How many threads a stage's compute pools get: the cores this process may use, shared with the processes that
run beside it (DDP processes on this node, parallel `dvc queue` experiments, parallel tuning workers).

torch, OpenMP and MKL each start one thread per core by default. Two processes doing so on the same cores
oversubscribe them: their threads spin waiting for each other and both run several times slower than with one
thread each. `trainer.num_threads: auto` divides the cores instead; a number sets it outright.

    from pipeline.training.threads import configure_threads
    configure_threads(params.trainer.num_threads, processes_per_node=2)   # before the heavy imports

DVC tells a stage nothing about its siblings (no worker count, no job index); every running queued experiment is
a `dvc exp exec-run --infofile <repo>/.dvc/tmp/exps/...` process, so they are counted in /proc.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Pools that read their size from the environment when their library loads (torch reads OMP_NUM_THREADS).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
PROC = Path("/proc")
EXPERIMENT_RUNNER = "exec-run"  # `dvc exp exec-run`: one per experiment a queue worker is running
EXPERIMENTS_DIR = Path(".dvc", "tmp", "exps")  # where its --infofile lives, under the repository root


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity stands
    return max(1, cores)


def _cmdline(pid: str) -> list[str]:
    try:
        return (PROC / pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # ended meanwhile, or not ours to read
        return []


def _parent(pid: str) -> str | None:
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[1]  # the command name in (...) may hold spaces


def _runs_experiment_of(args: list[str], exps_dir: str) -> bool:
    if EXPERIMENT_RUNNER not in args or "--infofile" not in args:
        return False
    i = args.index("--infofile")
    return i + 1 < len(args) and os.path.realpath(args[i + 1]).startswith(exps_dir)


def running_experiments(root: Path | None = None) -> int:
    """Experiments of the repository at `root` ($DVC_ROOT, else the working directory) running at the same time as
    this process, this one included: the live `dvc exp exec-run` processes of the repository, plus one if this
    process runs outside them (a plain `dvc repro` next to a busy queue)."""
    if not PROC.is_dir():
        return 1
    root = Path(root or os.environ.get("DVC_ROOT") or os.getcwd())
    exps_dir = os.path.realpath(root / EXPERIMENTS_DIR) + os.sep
    runners = {
        pid
        for pid in (p.name for p in PROC.iterdir() if p.name.isdigit())
        if _runs_experiment_of(_cmdline(pid), exps_dir)
    }
    pid: str | None = str(os.getpid())
    while pid and pid not in ("0", "1"):
        if pid in runners:
            return len(runners)
        pid = _parent(pid)
    return len(runners) + 1


def resolve_num_threads(setting: int | str, processes_per_node: int = 1, workers: int = 1) -> int:
    """`setting` if it is a number, else (auto) the available cores divided by the processes sharing them:
    `processes_per_node` (DDP) × the running queued experiments × `workers` (parallel tuning trials)."""
    if setting != "auto":
        return int(setting)
    sharing = max(1, processes_per_node) * running_experiments() * max(1, workers)
    return max(1, available_cores() // sharing)


def configure_threads(setting: int | str, processes_per_node: int = 1, workers: int = 1) -> int:
    """Size torch's, OpenMP's and the BLAS libraries' pools for this process; returns the thread count.

    Call it before torch, numpy's BLAS or scikit-learn do any work: the environment variables reach the pools that
    load afterwards, and those already loaded are resized in place."""
    n = resolve_num_threads(setting, processes_per_node, workers)
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    if "numpy" in sys.modules or "sklearn" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    return n


def devices_per_node(accelerator: str, devices: int | list[int] | str) -> int:
    """How many processes Lightning starts on this node for `trainer.devices` (one per device under DDP)."""
    if isinstance(devices, list):
        return max(1, len(devices))
    if devices != "auto":
        return max(1, int(devices))
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        return max(1, torch.cuda.device_count())
    return 1
