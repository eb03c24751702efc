"""Data larger than memory: time and peak memory of prepare and of one training epoch as the data grows.

    python bench/larger_than_memory.py [--sizes 100000 1000000 4000000 16000000] [--images 50000]
                                       [--workdir /tmp/...] [--batch-size 1024]

Generates, into a temporary folder (deleted afterwards, never committed), Parquet tables of each size x 20 float
columns plus a 2-class label, and a folder of small PNG files (16x16 RGB, 4 classes). Each stage runs in its own
process: prepare (`pipeline.stages.prepare.prepare`: the table read in chunks, the preprocessing fitted on a bounded
sample, the splits written as memory-mapped .npy files; the image folder listed and checked, nothing kept decoded)
and train (`pipeline.stages.train.fit`, one epoch, MLflow into a SQLite store in the folder: the train stage as it runs,
batches gathered from the memory maps, images decoded by DataLoader workers).

Peak memory is sampled every 50 ms over the stage's process and its children (DataLoader workers), as PSS (a page
shared by forked workers counts once): resident memory ("RSS" below), and its anonymous part (what the processes
allocated, as opposed to pages of the memory-mapped files, which the kernel drops under memory pressure and which
are no bound on the data a machine can train on). Time: prepare's own (start-up and imports excluded) and the
training epoch's (train batches only, timed by a callback; validation apart), per row. Prints the curve and the
ratios largest/smallest: train's peak RSS (goal: flat, bounded by batch and model) and time per row (goal: linear,
i.e. a ratio near 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES = 20
IMAGE_SIZE = 16
IMAGE_CLASSES = 4
GENERATE_CHUNK = 1_000_000
SAMPLE_S = 0.05


# ---------------------------------------------------------------------------------------------------------------
# data, generated chunk by chunk (this process never holds a whole table either)
def write_table(path: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES).astype(np.float32)
    names = [f"f{i}" for i in range(FEATURES)]
    writer = None
    for start in range(0, rows, GENERATE_CHUNK):
        n = min(GENERATE_CHUNK, rows - start)
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        label = (x @ weights + rng.normal(scale=2.0, size=n) > 0).astype(np.int64)
        table = pa.table({**{name: x[:, i] for i, name in enumerate(names)}, "label": label})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=262_144)
    assert writer is not None
    writer.close()


def write_images(root: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(IMAGE_CLASSES):
        (root / str(k)).mkdir(parents=True)
    for i in range(count):
        k = i % IMAGE_CLASSES
        pixels = rng.integers(0, 120, (IMAGE_SIZE, IMAGE_SIZE, 3))
        pixels[..., k % 3] += 100 + 30 * (k // 3)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(root / str(k) / f"{i:06d}.png")


# ---------------------------------------------------------------------------------------------------------------
# the stages, each in a child process of its own
def child(stage: str, workdir: Path, dataset: str, batch_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.chdir(workdir)
    from pipeline.config import DataParams, ImageParams, Params, TabularParams

    data = (
        DataParams(dataset=dataset, image=ImageParams(color="rgb"))
        if dataset == "images"
        else DataParams(dataset=dataset, tabular=TabularParams(target="label"))
    )
    prepared = workdir / f"prepared-{dataset}"
    if stage == "prepare":
        from pipeline.stages.prepare import prepare

        start = time.perf_counter()
        meta = prepare(data, prepared)
        seconds = time.perf_counter() - start
        rows = sum(meta["split_sizes"].values())
    else:
        from pipeline.stages.train import fit
        from pipeline.training.threads import configure_threads

        params = Params(data=data)
        params.model.name = "mlp"
        params.model.mlp.hidden_dims = [64]
        params.train.batch_size, params.train.max_epochs = batch_size, 1
        params.train.early_stopping_patience = None
        params.trainer.progress_bar = False
        params.trainer.deterministic = False
        params.mlflow.tracking_uri = f"sqlite:///{workdir}/mlflow.db"
        params.mlflow.experiment_name = "bench"
        params.mlflow.system_metrics = False
        configure_threads(1)  # one thread: this machine is shared, and a busy neighbour makes more spin
        timer = epoch_timer()
        fit(params, prepared, workdir / f"model-{dataset}", workdir / f"checkpoints-{dataset}", [timer])
        seconds = timer.seconds
        rows = json.loads((prepared / "meta.json").read_text())["split_sizes"]["train"]
    (workdir / f"{stage}-{dataset}.json").write_text(json.dumps({"seconds": seconds, "rows": rows}))


def epoch_timer():
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        """Seconds from the first training batch's start to the last one's end (validation apart)."""

        def __init__(self) -> None:
            self.start, self.seconds = 0.0, 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.seconds = time.perf_counter() - self.start

    return EpochTimer()


def _memory(pids: list[int]) -> tuple[int, int]:
    """Resident memory and its anonymous part (bytes), summed over the processes as PSS: a page that DataLoader
    workers share with the process they were forked from counts once, not once per process."""
    pss = anon = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # ended between listing and reading
            continue
        fields = dict(line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)
        pss += int(fields.get("Pss", "0 kB").split()[0]) * 1024
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024
    return pss, anon


def measure(stage: str, workdir: Path, dataset: str, batch_size: int) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", stage, "--workdir", str(workdir), "--dataset", dataset]
    cmd += ["--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DVC_ROOT", None)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    top = psutil.Process(proc.pid)
    peak_rss = peak_anon = 0
    while proc.poll() is None:
        try:
            pids = [proc.pid, *(c.pid for c in top.children(recursive=True))]
        except psutil.NoSuchProcess:
            break
        rss, anon = _memory(pids)
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        time.sleep(SAMPLE_S)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"{stage} {dataset} failed ({proc.returncode}):\n{output[-4000:]}")
    result = json.loads((workdir / f"{stage}-{dataset}.json").read_text())
    return {**result, "wall": time.perf_counter() - started, "rss": peak_rss, "anon": peak_anon}


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--images", type=int, default=50_000, help="files in the image folder; 0: none")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None, help="where the data is generated (default: a tmp)")
    parser.add_argument("--child", choices=["prepare", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.dataset, args.batch_size)
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-ltm-", dir=args.workdir))
    results = []
    try:
        cases = [(f"t{n}.parquet", n) for n in args.sizes] + ([("images", args.images)] if args.images else [])
        for dataset, n in cases:
            start = time.perf_counter()
            if dataset == "images":
                write_images(workdir / dataset, n)
            else:
                write_table(workdir / dataset, n)
            print(f"generated {dataset} ({n:,} rows) in {time.perf_counter() - start:.0f} s", flush=True)
            row = {"dataset": dataset, "rows": n}
            for stage in ("prepare", "train"):
                row[stage] = measure(stage, workdir, dataset, args.batch_size)
                r = row[stage]
                print(
                    f"  {stage:<8} {r['seconds']:7.1f} s ({r['wall']:.1f} s with start-up), "
                    f"{r['seconds'] / r['rows'] * 1e6:6.2f} us/row, peak RSS {r['rss'] / 2**20:7.0f} MiB "
                    f"(anonymous {r['anon'] / 2**20:.0f} MiB)",
                    flush=True,
                )
            row["prepared_mib"] = folder_size(workdir / f"prepared-{dataset}") / 2**20
            results.append(row)
            for leftover in (f"prepared-{dataset}", f"model-{dataset}", f"checkpoints-{dataset}", dataset):
                path = workdir / leftover  # this size's files, before the next (disk)
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nbatch {args.batch_size}, MLP [64], one epoch; tables x {FEATURES} float32 columns, Parquet")
    print("  data            rows |  prepare s  us/row  peak RSS  anon MiB |  train s  us/row  peak RSS  anon MiB")
    for row in results:
        p, t = row["prepare"], row["train"]
        print(
            f"  {row['dataset']:<16}{row['rows']:>10,} | {p['seconds']:8.1f} {p['seconds'] / p['rows'] * 1e6:7.2f} "
            f"{p['rss'] / 2**20:9.0f} {p['anon'] / 2**20:9.0f} | {t['seconds']:7.1f} "
            f"{t['seconds'] / t['rows'] * 1e6:7.2f} {t['rss'] / 2**20:9.0f} {t['anon'] / 2**20:9.0f}"
        )
    tables = [row for row in results if row["dataset"] != "images"]
    if len(tables) >= 2:
        small, large = tables[0], tables[-1]
        scale = large["rows"] / small["rows"]
        print(f"\nlargest / smallest table ({scale:.0f}x the rows):")
        for stage in ("prepare", "train"):
            s, g = small[stage], large[stage]
            per_row = (g["seconds"] / g["rows"]) / (s["seconds"] / s["rows"])
            print(
                f"  {stage:<8} peak RSS {g['rss'] / s['rss']:.2f}x, anonymous {g['anon'] / s['anon']:.2f}x; "
                f"time per row {per_row:.2f}x"
            )


if __name__ == "__main__":
    main()
