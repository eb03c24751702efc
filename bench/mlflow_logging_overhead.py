"""MLflow logging overhead per training step: no tracking vs the embedded SQLite store vs `mlflow server` over
PostgreSQL (and over SQLite), each synchronous and with MLflow's async logging.

    python bench/mlflow_logging_overhead.py [--steps 300] [--repeats 3] [--batch-size 64]

The step is a hand-written training step of the project's configured CNN (`build_model`, params.yaml's model.cnn)
on a batch of synthetic 1x8x8 images (digits' shape): forward, cross-entropy, backward, AdamW step, then the loss
and accuracy read out as Python floats. After each step the logged variants send what Lightning would send if the
module logged per step: one `MLFlowLogger.log_metrics` call (the logger class train uses; one MLflow `log_batch`)
with train/loss, train/acc and the `epoch` Lightning adds, i.e. logging at every step (trainer.log_every_n_steps
1; the project's default of 10 would divide the overhead by 10, and the project itself logs once per epoch).
Async variants pass `synchronous=False` to MLFlowLogger and the timing includes draining the queue when the run is
ended (`finalize`, as Lightning ends it), so nothing is left unlogged when the clock stops; every variant's metric
history is read back and must hold every step.
Stores: a SQLite file in a temporary folder (the project's default kind of store); a real `mlflow server` on
127.0.0.1 over a throw-away PostgreSQL 15 cluster, started as the tests start theirs (tests/helpers.py: `initdb`/
`pg_ctl` from /usr/lib/postgresql/<ver>/bin, as the `postgres` user when root) but with fsync on, PostgreSQL's
default, and the psycopg2 driver; the same server kind over
SQLite, to tell the HTTP hop from the database. Variants run interleaved, `--repeats` times each, after warm-up
steps. Reported (medians): ms per step in the training loop alone (what async logging keeps the loop from
waiting for), ms per step with the run ended and the queue drained, overhead = the latter - no tracking, and the
ratio to no tracking.
Torch runs one intra-op thread by default (`--threads`): on the shared 2-core machine this was written on, two
threads made this small step 6-8x slower and erratic (OpenMP threads waiting on each other under load), which would
drown the logging cost being measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import mlflow_server, postgres_cluster  # the throw-away servers the tests start

NUM_CLASSES = 10
IMAGE_SHAPE = [1, 8, 8]
WARMUP_STEPS = 20
SERVER_START_TIMEOUT_S = 180  # `mlflow server` imports a lot and creates its tables on first start
EXPERIMENT = "bench"


def start_servers(servers: ExitStack, tmp: Path) -> dict[str, str]:
    """`mlflow server` over SQLite and over a throw-away PostgreSQL (the tests' helpers), stopped with `servers`."""
    import pytest

    def server(store_uri: str, folder: Path) -> str:
        return servers.enter_context(mlflow_server(store_uri, folder / "artifacts", folder, SERVER_START_TIMEOUT_S))

    try:
        sqlite = server(f"sqlite:///{tmp}/server.db", tmp / "sqlite")
        # fsync on, PostgreSQL's default: commit latency is part of what a real store costs
        libpq_uri = servers.enter_context(postgres_cluster(fsync=True))
        # the psycopg2 driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, not installed
        postgres = server(libpq_uri.replace("postgresql://", "postgresql+psycopg2://", 1), tmp / "postgres")
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # the helpers speak pytest; here, one line
        sys.exit(f"could not start the servers: {exc}")
    return {"server over SQLite": sqlite, "server over PostgreSQL": postgres}


# --- the training step and its logging -------------------------------------------------------------------------


class TrainingStep:
    """The project's CNN, AdamW and one fixed synthetic batch: one call = one optimizer step."""

    def __init__(self, batch_size: int):
        import torch

        from models.registry import build_model
        from pipeline.config import load_params

        params = load_params(REPO / "params.yaml")
        torch.manual_seed(0)
        self.net = build_model("cnn", dataclasses.asdict(params.model.cnn), IMAGE_SHAPE, NUM_CLASSES)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay
        )
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = torch.randn(batch_size, *IMAGE_SHAPE)
        self.y = torch.randint(0, NUM_CLASSES, (batch_size,))
        self.net.train()

    def __call__(self) -> dict[str, float]:
        logits = self.net(self.x)
        loss = self.loss_fn(logits, self.y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {
            "train/loss": loss.item(),
            "train/acc": (logits.argmax(dim=1) == self.y).float().mean().item(),
            "epoch": 0,
        }


def new_logger(uri: str, synchronous: bool, run_name: str):
    """An MLFlowLogger as the train stage builds one, its run created now (not inside the timed loop)."""
    from pytorch_lightning.loggers import MLFlowLogger

    # A local store's artifacts beside it (MLflow's default is ./mlartifacts in the working directory).
    artifacts = Path(uri[len("sqlite:///") :]).with_name("artifacts").as_uri() if uri.startswith("sqlite:") else None
    logger = MLFlowLogger(
        experiment_name=EXPERIMENT,
        run_name=run_name,
        tracking_uri=uri,
        log_model=False,
        artifact_location=artifacts,
        synchronous=synchronous,
    )
    assert logger.run_id
    return logger


def seconds_per_step(
    step: TrainingStep, steps: int, uri: str | None, synchronous: bool, run_name: str
) -> tuple[float, float]:
    """Wall seconds per step of `steps` steps logging each to `uri` (None: no tracking): in the training loop
    alone, and with the run's end (async: the queue drained) included."""
    logger = new_logger(uri, synchronous, run_name) if uri else None
    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for i in range(steps):
        metrics = step()
        if logger:
            logger.log_metrics(metrics, step=i)
    in_loop = time.perf_counter() - start
    if logger:
        logger.finalize("success")  # ends the run; with async logging, waits until the queue is drained
    elapsed = time.perf_counter() - start
    if logger:
        logged = logger.experiment.get_metric_history(logger.run_id, "train/loss")
        assert len(logged) == steps, f"{run_name}: {len(logged)} of {steps} steps reached the store"
    return in_loop / steps, elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per sample")
    parser.add_argument("--repeats", type=int, default=3, help="samples per variant (median reported)")
    parser.add_argument("--batch-size", type=int, default=64, help="64: params.yaml's train.batch_size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see above)")
    parser.add_argument("--skip-servers", action="store_true", help="only no tracking and embedded SQLite")
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]  # nothing inherited: no async default, no other store
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a "View run at" line per server run otherwise

    import torch

    torch.set_num_threads(args.threads)
    step = TrainingStep(args.batch_size)
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as tmp, ExitStack() as servers:
        stores = {"embedded SQLite": f"sqlite:///{tmp}/mlflow.db"}
        if not args.skip_servers:
            stores.update(start_servers(servers, Path(tmp)))
        variants: dict[str, Callable[..., tuple[float, float]]] = {
            "no tracking": functools.partial(seconds_per_step, step, args.steps, None, True)
        }
        for store, uri in stores.items():
            for synchronous in (True, False):
                variants[f"{store}, {'sync' if synchronous else 'async'}"] = functools.partial(
                    seconds_per_step, step, args.steps, uri, synchronous
                )
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for repeat in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits all alike
            for name, measure in variants.items():
                samples[name].append(measure(f"{name} #{repeat}"))

    def median_ms(name: str, column: int) -> float:
        return statistics.median(sample[column] for sample in samples[name]) * 1000

    reference = median_ms("no tracking", 1)
    print(
        f"\nMLflow logging overhead per training step: CNN {IMAGE_SHAPE} batch {args.batch_size}, one log_metrics "
        f"call (3 metrics) per step, {args.steps} steps x {args.repeats} repeats (median), torch threads "
        f"{torch.get_num_threads()}"
    )
    print("  variant                             | ms/step, loop only | ms/step, run ended | overhead ms/step | ratio")
    for name in samples:
        ms = median_ms(name, 1)
        print(
            f"  {name:<35} | {median_ms(name, 0):>18.2f} | {ms:>18.2f} | {ms - reference:>16.2f} "
            f"| {ms / reference:>4.2f}x"
        )
    print("  (overhead and ratio: run ended, against no tracking; async logging's queue is drained by then)")


if __name__ == "__main__":
    main()
