"""Speed and peak memory of the prepare stage on a large table and on a large text corpus.

    python bench/preprocess_speed.py [--rows 1000000] [--messages 200000] [--only tabular|text] [--sms PATH]

Everything is written into a temporary folder, deleted at the end:

- tabular: a CSV of `--rows` rows x 20 columns (16 float columns with about 1 % missing values, 3 text columns of
  about 10 categories each, an integer target of 5 classes), prepared with `data.tabular.target` set and the
  tabular defaults of params.yaml (median imputation, standard scaling, one-hot categories; `--encoding embedding`
  for one index per categorical column instead).
- text: `--messages` messages drawn with replacement (seeded) from the SMS Spam Collection, written as a header-less
  TSV (label TAB text) and prepared with `data.kind: text` and params.yaml's text defaults.

Generating the files is not timed. Each prepare runs in a fresh Python process (`python -c`, PYTHONPATH=repo,
working directory the temporary folder, with its own params.yaml there) that imports what the stage imports and then
times the `pipeline.stages.prepare.prepare(...)` call alone. Its peak memory is the kernel's peak resident set size of
that child: `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` (KiB on Linux) read, after the child exits, by a bare
launcher process that started it and nothing else (see LAUNCHER). Nothing is subtracted from that peak; next to it the
script reports the peak of a process that only imports the same modules and exits, so the import overhead is visible,
and in a column of its own, clearly apart from the total, (peak - import-only) / raw: the memory the work itself took.

Goals: prepare <= 30 s, and peak memory <= 4 x the raw file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"
GOAL_SECONDS = 30.0
GOAL_MEMORY_RATIO = 4.0

# What each kind of prepare imports before its first line of work; the import-only child imports exactly these.
IMPORTS = {
    "tabular": [
        "numpy",
        "pandas",
        "pipeline.stages.prepare",
        "pipeline.data",
        "pipeline.data.tabular",
        "pipeline.files",
        "sklearn.model_selection",
        "joblib",
        "pyarrow",
        "pyarrow.csv",
        "pyarrow.compute",
    ],
    "text": [
        "numpy",
        "pandas",
        "pipeline.stages.prepare",
        "pipeline.data",
        "pipeline.data.text",
        "pipeline.files",
        "sklearn.model_selection",
    ],
}

CHILD = """
import importlib, json, sys, time
for name in {imports!r}:
    importlib.import_module(name)
if {run!r}:
    from pipeline.config import load_params
    from pipeline.stages.prepare import prepare
    params = load_params("params.yaml").data
    start = time.perf_counter()
    meta = prepare(params, __import__("pathlib").Path("prepared"))
    seconds = time.perf_counter() - start
    print(json.dumps({{"seconds": seconds, "split_sizes": meta["split_sizes"], "input_shape": meta["input_shape"]}}))
"""


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """16 float columns (~1 % NaN, 4 decimals), 3 categorical text columns (~10 levels), an integer target."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for j in range(16):
        values = np.round(rng.normal(loc=j, scale=1 + j % 4, size=rows), 4)
        values[rng.random(rows) < 0.01] = np.nan
        columns[f"num_{j:02d}"] = values
    for j, levels in enumerate((10, 9, 11)):
        names = np.array([f"c{j}_level_{k}" for k in range(levels)], dtype=object)
        columns[f"cat_{j}"] = names[rng.integers(0, levels, size=rows)]
    columns["target"] = rng.integers(0, 5, size=rows)
    # pyarrow writes a missing float as an empty field, which the stage's reader takes as missing again.
    pacsv.write_csv(pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False), path)


def write_messages(path: Path, source: Path, messages: int, seed: int = 0) -> int:
    """`messages` lines of `source` drawn with replacement; returns the number of distinct source lines."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if "\t" in line]
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(lines), size=messages)
    path.write_text("\n".join(lines[i] for i in picked) + "\n", encoding="utf-8")
    return len(lines)


# Launches the measured child and reports, after it exits, getrusage(RUSAGE_CHILDREN).ru_maxrss: the child's peak RSS.
# It exists because a child's ru_maxrss starts at the peak RSS of the process that spawned it (the kernel carries the
# old address space's high-water mark over the exec), and this script's own process is large once it has generated
# the table; this launcher is a bare interpreter (-S: no site packages) of about 10 MB.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("ru_maxrss_children_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""


def run_child(code: str, cwd: Path) -> tuple[dict | None, float, int]:
    """(what the child printed as JSON, wall seconds, peak RSS in KiB) of `python -c code` in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DVC_ROOT", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"child failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    tag, kib = lines[-1].split()
    assert tag == "ru_maxrss_children_kib", lines
    result = json.loads(lines[-2]) if len(lines) > 1 else None
    return result, wall, int(kib)


def write_params(folder: Path, data: dict) -> None:
    """params.yaml of the repository with the `data` section replaced (the rest is read but unused by prepare)."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(ROOT / "params.yaml")
    params.data = OmegaConf.merge(params.data, data)
    OmegaConf.save(params, folder / "params.yaml")


def measure(kind: str, folder: Path, raw: Path) -> dict:
    baseline, _, baseline_kib = run_child(CHILD.format(imports=IMPORTS[kind], run=False), folder)
    result, wall, peak_kib = run_child(CHILD.format(imports=IMPORTS[kind], run=True), folder)
    assert baseline is None and result is not None
    size_mb = raw.stat().st_size / 2**20
    peak_mb, base_mb = peak_kib / 1024, baseline_kib / 1024
    return {
        "kind": kind,
        "seconds": result["seconds"],
        "wall": wall,
        "size_mb": size_mb,
        "peak_mb": peak_mb,
        "import_mb": base_mb,
        "ratio": peak_mb / size_mb,
        "ratio_net": (peak_mb - base_mb) / size_mb,
        "split_sizes": result["split_sizes"],
        "input_shape": result["input_shape"],
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated table")
    parser.add_argument("--messages", type=int, default=200_000, help="messages of the generated text corpus")
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS, help="the SMS Spam Collection file")
    parser.add_argument("--only", choices=("tabular", "text"), help="run one of the two")
    parser.add_argument(
        "--encoding",
        choices=("onehot", "embedding"),
        default="onehot",
        help="data.tabular.categorical_encoding of the table (%(default)s)",
    )
    args = parser.parse_args()

    results = []
    print(f"load average at start (1/5/15 min): {load_average()} on {os.cpu_count()} CPU(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="preprocess_speed.") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "tabular"):
            folder = tmp / "tabular"
            folder.mkdir()
            raw = folder / "table.csv"
            start = time.perf_counter()
            write_table(raw, args.rows)
            print(
                f"tabular: wrote {args.rows:,} rows x 20 columns ({raw.stat().st_size / 2**20:.1f} MB) in "
                f"{time.perf_counter() - start:.1f} s (not timed)",
                flush=True,
            )
            write_params(
                folder,
                {
                    "dataset": str(raw),
                    "kind": "tabular",
                    "tabular": {"target": "target", "categorical_encoding": args.encoding},
                },
            )
            results.append({**measure("tabular", folder, raw), "rows": args.rows})
        if args.only in (None, "text"):
            folder = tmp / "text"
            folder.mkdir()
            raw = folder / "messages.tsv"
            distinct = write_messages(raw, args.sms, args.messages)
            print(
                f"text: wrote {args.messages:,} messages drawn from {distinct:,} SMS lines "
                f"({raw.stat().st_size / 2**20:.1f} MB, not timed)",
                flush=True,
            )
            write_params(folder, {"dataset": str(raw), "kind": "text"})
            results.append({**measure("text", folder, raw), "rows": args.messages})

    print(f"\nprepare stage, one fresh process each; load average at end (1/5/15 min): {load_average()}")
    header = (
        f"{'data':<8} {'rows':>10} {'raw MB':>7} {'prepare s':>9} {'rows/s':>10} {'peak RSS MB':>11} "
        f"{'import-only MB':>14} {'peak/raw':>8} {'(peak-import)/raw':>17}  goals (<= {GOAL_SECONDS:.0f} s, "
        f"<= {GOAL_MEMORY_RATIO:.0f}x raw)"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        time_ok = r["seconds"] <= GOAL_SECONDS
        memory_ok = r["ratio"] <= GOAL_MEMORY_RATIO
        print(
            f"{r['kind']:<8} {r['rows']:>10,} {r['size_mb']:>7.1f} {r['seconds']:>9.2f} "
            f"{r['rows'] / r['seconds']:>10,.0f} {r['peak_mb']:>11.0f} {r['import_mb']:>14.0f} "
            f"{r['ratio']:>7.2f}x {r['ratio_net']:>16.2f}x  time {'met' if time_ok else 'MISSED'}, "
            f"memory {'met' if memory_ok else 'MISSED'}"
        )
    print(
        f"tabular categorical encoding: {args.encoding}; (peak-import)/raw leaves out the import-only process's "
        "peak, which the goal does not"
    )
    for r in results:
        print(
            f"  {r['kind']}: splits {r['split_sizes']}, input shape {r['input_shape']}, child wall time "
            f"{r['wall']:.1f} s (imports and start-up included)"
        )


if __name__ == "__main__":
    main()
