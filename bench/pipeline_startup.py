"""Where the wall time of `dvc repro` goes: start-up, imports and logging against the training steps themselves.

    python bench/pipeline_startup.py [--rounds 2]

In a fresh copy of this repository (tests/helpers.py `make_repo_copy` with params.yaml as committed here), runs
the whole default pipeline with `dvc repro` and times each stage from DVC's "Running stage" lines; the train stage
reports the seconds spent inside its training steps (forward, backward, optimizer, per-step metrics) and inside
`Trainer.fit` through PIPELINE_STEP_TIMES. Then `dvc repro` with nothing changed and
`python -m pipeline.stages.validate` (median of 5 each). Goal: at most a third of the fresh `dvc repro`
outside the training steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_repo_copy, run, stage_env

STAGE_LINE = "Running stage '"


def timed_repro(repo: Path, steps_file: Path) -> tuple[float, dict[str, float]]:
    """Seconds of the whole `dvc repro` and of each stage it ran (from one "Running stage" line to the next)."""
    env = stage_env(PIPELINE_STEP_TIMES=str(steps_file))
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        output = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith(STAGE_LINE):
                marks.append((line.split("'")[1], time.perf_counter()))
    total = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"dvc repro exited {proc.returncode}:\n{''.join(output)[-4000:]}")
    ends = [t for _, t in marks[1:]] + [start + total]
    stages = {name: end - begin for (name, begin), end in zip(marks, ends, strict=True)}
    stages["dvc before the first stage"] = marks[0][1] - start
    return total, stages


def median_seconds(cmd: list[str], cwd: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(cmd, cwd)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still removes the temporary copies
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-startup-"))
    try:
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            repo = make_repo_copy(tmp / f"repo{r}")
            shutil.copy(REPO / "params.yaml", repo / "params.yaml")
            steps_file = tmp / f"steps{r}.json"
            total, stages = timed_repro(repo, steps_file)
            steps = (
                json.loads(steps_file.read_text())
                if steps_file.is_file()
                else {  # a train.py without timer
                    "steps": float("nan"),
                    "step_s": float("nan"),
                    "fit_s": float("nan"),
                }
            )
            rows.append({"load": load, "total": total, **stages, **steps})
            print(f"round {r + 1}: {json.dumps({k: round(v, 2) for k, v in rows[-1].items()})}", flush=True)
        noop = median_seconds(["dvc", "repro"], repo)
        validate = median_seconds([sys.executable, "-m", "pipeline.stages.validate"], repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    loads = ", ".join(f"{row['load']:.1f}" for row in rows)
    print(
        f"\nFresh `dvc repro` of the default pipeline, median of {len(rows)} rounds (load average before each: "
        f"{loads}; {os.cpu_count()} cores)"
    )
    print("| part | seconds | share of the whole |")
    print("| --- | ---: | ---: |")
    for key in ["dvc before the first stage", "validate", "prepare", "train", "evaluate"]:
        print(f"| {key} | {med(key):.1f} | {med(key) / med('total'):.0%} |")
    print(f"| whole `dvc repro` | {med('total'):.1f} | 100% |")
    print(f"| inside train: `Trainer.fit` | {med('fit_s'):.1f} | {med('fit_s') / med('total'):.0%} |")
    print(
        f"| inside fit: the {med('steps'):.0f} training steps | {med('step_s'):.1f} | "
        f"{med('step_s') / med('total'):.0%} |"
    )
    outside = [(row["total"] - row["step_s"]) / row["total"] for row in rows]
    print(f"Outside the training steps: {', '.join(f'{x:.0%}' for x in outside)} (goal: at most 33%)")
    print(
        f"`dvc repro` with nothing changed: {noop:.2f} s (goal ≤ 1 s); `python -m pipeline.stages.validate`: "
        f"{validate:.2f} s (goal ≤ 0.3 s); medians of 5"
    )


if __name__ == "__main__":
    main()
