"""Training throughput of DDP on CPU (gloo): N processes vs 1 process, the project's training path, same global batch.

    python bench/ddp_throughput.py [--rows 20000] [--epochs 4] [--global-batches 64 512] [--processes 2]
                                   [--model cnn]

Both runs are `pipeline.stages.train.fit`, exactly as the train stage runs it (PreparedDataModule, Classifier with its
torchmetrics, checkpointing, MLflow logging into a SQLite store in a temporary folder), with the repository's
params.yaml except: `model.name`, `train.max_epochs`, no early stopping, no progress bar, and
- 1 process: `trainer.devices 1`, `train.batch_size` = the global batch;
- N processes: `trainer.devices N`, `trainer.strategy ddp`, `train.batch_size` = global batch / N (Lightning's batch
  size is per process), so both take the same optimizer steps over the same samples.
The data is a synthetic prepared folder of 1x8x8 "images" (the shape of digits, labelled by a random linear teacher),
written once and shared by both runs. Each run is a fresh `python` process (DDP relaunches this script for its
other ranks). Lightning gives each DDP process cpu_count / N torch threads; the single process runs twice, with
torch's default thread count (all cores: the train stage as it is) and with one thread (OMP_NUM_THREADS=1), so the
table tells the gain of data parallelism from that of dropping intra-op threading, which costs on small ops.
Throughput is global training samples per second over the epochs after the first (start-up, the DDP rendezvous and
the first epoch's warm-up excluded), validation excluded, timed on global rank zero, whose epochs end in step with
the others' (every step all-reduces the gradients). Prints samples/s and the ratio N processes / 1 process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE_SHAPE = [1, 8, 8]


def make_prepared(folder: Path, rows: int, seed: int = 0) -> None:
    """A prepare-stage output folder of learnable synthetic images: bench/train_throughput.py's data, reshaped."""
    from bench.train_throughput import make_data, write_prepared

    x, y = make_data(rows, int(np.prod(IMAGE_SHAPE)), seed)
    write_prepared(folder, x.reshape(rows, *IMAGE_SHAPE), y, "image")


def worker(args: argparse.Namespace) -> None:
    """One training run (every DDP rank runs this); global rank zero writes its timing to args.result."""
    import torch

    from bench.train_throughput import EpochTimer
    from pipeline import tracking
    from pipeline.config import load_params
    from pipeline.stages.train import fit

    class TimedToFile(EpochTimer):
        def on_fit_end(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                timed = self.epoch_seconds[1:]  # the first epoch pays for warm-up
                samples = len(trainer.train_dataloader.dataset) * len(timed)
                Path(args.result).write_text(
                    json.dumps(
                        {
                            "samples_per_s": samples / sum(timed),
                            "epoch_seconds": self.epoch_seconds,
                            "world_size": trainer.world_size,
                            "torch_threads": torch.get_num_threads(),
                        }
                    )
                )

    devices = args.worker
    params = load_params(REPO / "params.yaml")
    params.model.name = args.model
    params.train.max_epochs, params.train.early_stopping_patience = args.epochs, None
    params.train.batch_size = args.global_batch // devices
    params.trainer.devices, params.trainer.progress_bar = devices, False
    params.trainer.strategy = "ddp" if devices > 1 else "auto"
    run_dir = Path(args.run_dir)
    params.mlflow.tracking_uri, params.mlflow.experiment_name = f"sqlite:///{run_dir}/mlflow.db", "bench"
    tracking.ensure_store(params.mlflow.tracking_uri, params.mlflow.experiment_name)
    fit(params, Path(args.prepared), run_dir / "model", run_dir / "checkpoints", extra_callbacks=[TimedToFile()])


def timed_run(
    args: argparse.Namespace,
    prepared: Path,
    tmp: Path,
    devices: int,
    global_batch: int,
    torch_threads: int | None = None,
) -> dict:
    """One run in a fresh process; `torch_threads` pins its thread count (OMP_NUM_THREADS), else torch's default."""
    run_dir = tmp / f"run-{devices}-{global_batch}-{torch_threads}"
    run_dir.mkdir()
    result = run_dir / "result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(devices),
        "--prepared",
        str(prepared),
        "--run-dir",
        str(run_dir),
        "--result",
        str(result),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--global-batch",
        str(global_batch),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_")) and k != "OMP_NUM_THREADS"}
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    done = subprocess.run(cmd, check=False, cwd=run_dir, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not result.is_file():
        sys.exit(
            f"{devices}-process run failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=4, help="the first is not timed")
    parser.add_argument(
        "--global-batches",
        type=int,
        nargs="+",
        default=[64, 512],
        help="samples per optimizer step over all processes (64: params.yaml's train.batch_size)",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="cnn", help="a models/ family configured in params.yaml")
    # Internal: one training run, launched by main() and relaunched by DDP for the other ranks.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--global-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    if any(batch % args.processes for batch in args.global_batches):
        parser.error(f"every --global-batches value must be divisible by --processes {args.processes}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        prepared = Path(tmp) / "prepared"
        make_prepared(prepared, args.rows)
        train_rows = json.loads((prepared / "meta.json").read_text())["split_sizes"]["train"]
        for global_batch in args.global_batches:
            single = timed_run(args, prepared, Path(tmp), 1, global_batch)
            one_thread = timed_run(args, prepared, Path(tmp), 1, global_batch, torch_threads=1)
            ddp = timed_run(args, prepared, Path(tmp), args.processes, global_batch)
            assert ddp["world_size"] == args.processes and one_thread["torch_threads"] == 1, (ddp, one_thread)
            rows.append((global_batch, single, one_thread, ddp))

    print(
        f"\nDDP training throughput (global samples/s), {train_rows} training rows of {IMAGE_SHAPE}, model "
        f"{args.model} (params.yaml), epochs 2-{args.epochs} timed, CPU cores {os.cpu_count()}, gloo"
    )
    print(
        f"  global batch | (a) 1 process, torch threads | (b) 1 process, 1 thread | (c) {args.processes} processes "
        "DDP, threads each | (c)/(a) | (c)/(b)"
    )
    for global_batch, single, one_thread, ddp in rows:
        print(
            f"  {global_batch:>12} | {single['samples_per_s']:>18,.0f} ({single['torch_threads']:>2}) "
            f"| {one_thread['samples_per_s']:>23,.0f} | {ddp['samples_per_s']:>21,.0f} ({ddp['torch_threads']:>2}) "
            f"| {ddp['samples_per_s'] / single['samples_per_s']:>6.2f}x "
            f"| {ddp['samples_per_s'] / one_thread['samples_per_s']:>6.2f}x"
        )


if __name__ == "__main__":
    main()
