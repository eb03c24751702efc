"""Parallel experiments and busy neighbours: wall time of the default pipeline with `trainer.num_threads` as set.

    python bench/parallel_queue.py [--rounds 2] [--fast]

In a throw-away copy of this repository (tests/helpers.py `make_repo_copy`, params.yaml as committed here unless
--fast), prepare is run and committed once; then each round measures
- queue: 2 experiments (`dvc exp run --queue`, each with its own train.seed so the run cache restores nothing) run by
  `dvc queue start -j 1`, by `-j 2`, and by `-j 2` with trainer.num_threads = the core count (what torch does by
  default, i.e. the behaviour before `auto`); wall time from `dvc queue start` until both experiments are done;
- neighbour: one experiment in the workspace (`dvc exp run`) alone, then next to a busy neighbour (a process
  spinning on one core), with num_threads auto and with 1.
Ratios are against the first row of each table, measured in the same round; the median over rounds is printed
with the load average seen before each round (other work on the machine shows up there).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_repo_copy, run

EXPERIMENTS = 2
POLL_S = 0.5
seeds = itertools.count(1000)  # every experiment trains with a new seed: nothing can come from the run cache


def dvc(repo: Path, *args: str, timeout: int = 3600) -> str:
    return run(["dvc", *args], repo, timeout=timeout).stdout


def exp_refs(repo: Path) -> int:
    """Finished experiments: refs/exps/<baseline[:2]>/<baseline[2:]>/<name> (not the queue's own refs/exps/celery)."""
    out = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout
    return sum(1 for line in out.splitlines() if len(line.strip().split("/")) == 5)


def queue_workers(repo: Path) -> list[psutil.Process]:
    workers = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if "queue-worker" in cmd and Path(cwd).resolve() == repo.resolve():
            workers.append(proc)
    return workers


def run_queue(repo: Path, jobs: int, num_threads: int | str, label: str) -> float:
    """Queue EXPERIMENTS experiments, start `jobs` workers, return seconds until all of them are done."""
    for _ in range(EXPERIMENTS):
        dvc(
            repo, "exp", "run", "--queue", "-S", f"train.seed={next(seeds)}", "-S", f"trainer.num_threads={num_threads}"
        )
    done_before = exp_refs(repo)
    start = time.perf_counter()
    dvc(repo, "queue", "start", "-j", str(jobs))
    while exp_refs(repo) < done_before + EXPERIMENTS:
        if not queue_workers(repo) and exp_refs(repo) < done_before + EXPERIMENTS:
            time.sleep(2)  # the last worker may exit a moment before its experiment's ref is written
            if exp_refs(repo) < done_before + EXPERIMENTS:
                raise SystemExit(
                    f"{label}: experiments failed; see `dvc queue status` / `dvc queue logs` in {repo}\n"
                    + dvc(repo, "queue", "status")
                )
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - start
    while queue_workers(repo):  # idle workers linger a few seconds; the next measurement starts without them
        time.sleep(POLL_S)
    return elapsed


def run_workspace(repo: Path, num_threads: int | str, neighbour: bool) -> float:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    try:
        start = time.perf_counter()
        dvc(repo, "exp", "run", "-S", f"train.seed={next(seeds)}", "-S", f"trainer.num_threads={num_threads}")
        return time.perf_counter() - start
    finally:
        if busy:
            busy.kill()
            busy.wait()


def table(title: str, rows: dict[str, list[float]], loads: list[float]) -> None:
    print(
        f"\n{title} (median of {len(next(iter(rows.values())))} rounds; load average before each round: "
        f"{', '.join(f'{x:.1f}' for x in loads)}; {psutil.cpu_count()} cores)"
    )
    print("| configuration | wall time (s), per round | median (s) | ratio to the first row, per round (median) |")
    print("| --- | ---: | ---: | ---: |")
    reference = next(iter(rows.values()))
    for name, times in rows.items():
        ratios = [t / r for t, r in zip(times, reference, strict=True)]
        print(
            f"| {name} | {', '.join(f'{t:.0f}' for t in times)} | {statistics.median(times):.0f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} ({statistics.median(ratios):.2f}×) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="tests/helpers.py FAST_PARAMS instead of params.yaml")
    parser.add_argument("--skip-neighbour", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still removes the temporary copies
    cores = psutil.Process().cpu_affinity() if hasattr(psutil.Process, "cpu_affinity") else None
    all_cores = len(cores) if cores else os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="parallel-queue-"))
    try:
        repo = make_repo_copy(tmp / "repo")
        if not args.fast:
            shutil.copy(REPO / "params.yaml", repo / "params.yaml")
        dvc(repo, "repro", "prepare")
        run(["git", "add", "-A"], repo)
        run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "prepared"], repo)

        queue: dict[str, list[float]] = {
            "-j 1, num_threads auto": [],
            "-j 2, num_threads auto": [],
            f"-j 2, num_threads {all_cores} (torch's default)": [],
        }
        neighbour: dict[str, list[float]] = {
            "alone, num_threads auto": [],
            "busy neighbour, num_threads auto": [],
            "busy neighbour, num_threads 1": [],
        }
        queue_loads, neighbour_loads = [], []
        for r in range(args.rounds):
            queue_loads.append(os.getloadavg()[0])
            order = list(zip(queue, [(1, "auto"), (2, "auto"), (2, all_cores)], strict=True))
            for name, (jobs, threads) in order if r % 2 == 0 else order[::-1]:
                queue[name].append(run_queue(repo, jobs, threads, name))
                print(f"round {r + 1}: {name}: {queue[name][-1]:.1f} s", flush=True)
            if args.skip_neighbour:
                continue
            neighbour_loads.append(os.getloadavg()[0])
            order = list(zip(neighbour, [("auto", False), ("auto", True), (1, True)], strict=True))
            for name, (threads, busy) in order if r % 2 == 0 else order[::-1]:
                neighbour[name].append(run_workspace(repo, threads, busy))
                print(f"round {r + 1}: {name}: {neighbour[name][-1]:.1f} s", flush=True)
        table(
            f"{EXPERIMENTS} queued experiments of the {'fast' if args.fast else 'default'} pipeline", queue, queue_loads
        )
        if not args.skip_neighbour:
            table(f"One experiment of the {'fast' if args.fast else 'default'} pipeline", neighbour, neighbour_loads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
