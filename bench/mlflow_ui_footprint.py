"""Processes and memory of the MLflow UI: MLflow's defaults against the light local UI that `make ui` starts.

    python bench/mlflow_ui_footprint.py [--rounds 2]

Each configuration starts `mlflow ui` on a free loopback port over an empty SQLite store in a temporary folder,
waits until /health answers and the process tree has stopped growing, then counts the processes of the tree and
sums their RSS (shared pages counted once per process, as `ps` would) and their USS (memory only that process
holds; what stopping it would free). Start-up time is until /health answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
CONFIGS = {  # the first is the reference, the last what `make ui` runs
    "MLflow defaults (4 workers, job runner)": ([], {}),
    "4 workers, no job runner": ([], NO_JOBS),
    "2 workers, no job runner": (["--workers", "2"], NO_JOBS),
    "make ui: 1 worker, no job runner": (["--workers", "1"], NO_JOBS),
}
SETTLE_S = 10  # the job runner starts its consumers after the server answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(args: list[str], env_extra: dict[str, str], workdir: Path) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(env_extra, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"mlflow ui {' '.join(args)} exited {proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        ready = time.perf_counter() - start
        time.sleep(SETTLE_S)
        procs, rss, uss = tree(proc.pid), 0, 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.NoSuchProcess:
                continue
            rss, uss = rss + info.rss, uss + info.uss
        return {"processes": len(procs), "rss_mb": rss / 2**20, "uss_mb": uss / 2**20, "ready_s": ready}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, (flags, env)) in enumerate(CONFIGS.items()):
                workdir = Path(tmp, f"{r}-{i}")
                workdir.mkdir()
                results[name].append(measure(flags, env, workdir))
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores; median of {args.rounds} rounds")
    print("| configuration | processes | summed RSS (MB) | summed USS (MB) | ready after (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {}
    for name, rows in results.items():
        m = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        medians[name] = m
        print(f"| {name} | {m['processes']:.0f} | {m['rss_mb']:,.0f} | {m['uss_mb']:,.0f} | {m['ready_s']:.1f} |")
    default, light = medians[next(iter(CONFIGS))], medians[list(CONFIGS)[-1]]
    print(
        f"make ui / defaults: processes {light['processes'] / default['processes']:.2f}×, RSS "
        f"{light['rss_mb'] / default['rss_mb']:.2f}×, USS {light['uss_mb'] / default['uss_mb']:.2f}×"
    )


if __name__ == "__main__":
    main()
