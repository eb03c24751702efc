"""Every network and the training around it: real Lightning fits on tiny data.

Networks, the LightningModule's optimisers, and a real (tiny) train + evaluate into a throw-away MLflow store.

Every network on every kind of input it reads: shapes, gradients, learnability, padding, and clear refusals.

The networks are built the way the train stage builds them, from `dataclasses.asdict` of their params section, so
a constructor that drifts from the schema fails here first. Sizes are tiny to keep the file fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from torch.nn import functional as F

from models.cnn import CNN
from models.registry import REGISTRY, build_model
from models.specs import PAD_ID
from pipeline.config import (
    MODEL_NAMES,
    CNNParams,
    DataParams,
    MLPParams,
    ModelParams,
    RNNParams,
    TrainParams,
    TransformerParams,
    config_hash,
    load_params,
    used_params,
)
from pipeline.data import read_split
from pipeline.evaluation.metrics import HEADLINE_METRICS
from pipeline.stages.prepare import prepare
from pipeline.training.module import Classifier
from tests.helpers import REPO, bare_trainer, sqlite_uri

DIGITS_SHAPE = [1, 8, 8]
NUM_CLASSES = 10
MAX_EPOCHS = 2


# ---------------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------------
def test_registry_matches_the_schema() -> None:
    # Every `model.name` params.yaml accepts has a network, and every network has a params section.
    assert set(REGISTRY) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_model_builds_from_schema_defaults_and_outputs_one_logit_per_class(name: str) -> None:
    hparams = dataclasses.asdict(getattr(ModelParams(), name))
    net = build_model(name, hparams, DIGITS_SHAPE, NUM_CLASSES)
    assert isinstance(net, REGISTRY[name])

    x = torch.randn(5, *DIGITS_SHAPE)
    net.train()
    assert net(x).shape == (5, NUM_CLASSES)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.shape == (5, NUM_CLASSES)
    assert torch.isfinite(out).all()
    # Gradients reach every parameter.
    net.train()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_cnn_rejects_non_image_input_and_points_to_mlp() -> None:
    hparams = dataclasses.asdict(ModelParams().cnn)
    with pytest.raises(ValueError, match="mlp"):
        CNN(input_shape=(64,), num_classes=NUM_CLASSES, **hparams)
    with pytest.raises(ValueError, match="mlp"):
        build_model("cnn", hparams, [64], NUM_CLASSES)


def test_cnn_rejects_more_blocks_than_the_image_can_halve() -> None:
    hparams = {**dataclasses.asdict(ModelParams().cnn), "channels": [4, 4, 4, 4]}  # 8 -> 4 -> 2 -> 1 -> 0
    with pytest.raises(ValueError, match=re.escape("at most 3 entries in model.cnn.channels")):
        build_model("cnn", hparams, DIGITS_SHAPE, NUM_CLASSES)
    hparams["channels"] = [4, 4, 4]  # 8 -> 1 pixel still works
    assert build_model("cnn", hparams, DIGITS_SHAPE, NUM_CLASSES)(torch.randn(2, *DIGITS_SHAPE)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------------------
# Optimisers and schedulers
# ---------------------------------------------------------------------------------------------------------------
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = {
    "none": None,
    "step": torch.optim.lr_scheduler.StepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_configure_optimizers(optimizer: str, scheduler: str) -> None:
    params = TrainParams(
        optimizer=optimizer,
        scheduler=scheduler,
        lr=0.02,
        weight_decay=0.001,
        momentum=0.5,
        step_size=3,
        gamma=0.5,
        max_epochs=7,
        min_lr=1e-5,
        plateau_patience=2,
        monitor="val/accuracy",
    )
    net = build_model("mlp", {"hidden_dims": [8], "dropout": 0.0}, DIGITS_SHAPE, NUM_CLASSES)
    module = Classifier(net, NUM_CLASSES, params)

    configured = module.configure_optimizers()
    if scheduler == "none":
        opt, sched = configured, None
    else:
        opt, sched = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        assert configured["lr_scheduler"]["interval"] == "epoch"
        assert configured["lr_scheduler"]["monitor"] == "val/accuracy"

    assert type(opt) is OPTIMIZERS[optimizer]
    group = opt.param_groups[0]
    assert group["lr"] == 0.02
    assert group["weight_decay"] == 0.001
    if optimizer == "sgd":
        assert group["momentum"] == 0.5
    # The optimiser updates exactly the network's parameters.
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}

    if SCHEDULERS[scheduler] is None:
        assert sched is None
        return
    assert type(sched) is SCHEDULERS[scheduler]
    if scheduler == "step":
        assert (sched.step_size, sched.gamma) == (3, 0.5)
    elif scheduler == "cosine":
        assert (sched.T_max, sched.eta_min) == (7, 1e-5)
    else:
        # val/accuracy is maximised, so the plateau scheduler waits for it to stop rising.
        assert sched.mode == "max"
        assert (sched.factor, sched.patience, sched.min_lrs) == (0.5, 2, [1e-5])


def test_plateau_on_loss_minimises() -> None:
    params = TrainParams(scheduler="plateau", monitor="val/loss")
    module = Classifier(build_model("mlp", {"hidden_dims": [8], "dropout": 0.0}, DIGITS_SHAPE, 10), 10, params)
    assert module.configure_optimizers()["lr_scheduler"]["scheduler"].mode == "min"


def test_logged_loss_is_the_per_sample_mean_over_uneven_batches() -> None:
    from torch.nn import functional

    from pipeline.training.datamodule import InMemoryDataset, PreparedDataModule

    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(10, 4), torch.randint(0, 3, (10,))
    data = PreparedDataModule.of_splits(InMemoryDataset(x, y), InMemoryDataset(x, y), batch_size=4)  # 4, 4, 2
    trainer = bare_trainer()
    (scores,) = trainer.validate(Classifier(net, 3, TrainParams()), datamodule=data, verbose=False)
    with torch.no_grad():
        expected = functional.cross_entropy(net(x), y).item()
    assert scores["val/loss"] == pytest.approx(expected, rel=1e-6)


def test_class_weights_weigh_the_objective_but_not_the_logged_loss() -> None:
    from torch.nn import functional

    from pipeline.training.builders import balanced_class_weights
    from pipeline.training.datamodule import InMemoryDataset, PreparedDataModule

    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(12, 4), torch.tensor([0] * 8 + [1] * 3 + [2])
    weights = balanced_class_weights(y.numpy(), 3)
    assert weights.tolist() == pytest.approx([12 / (3 * 8), 12 / (3 * 3), 12 / (3 * 1)])  # n / (k * count)
    module = Classifier(net, 3, TrainParams(), class_weights=weights)
    with torch.no_grad():
        objective = module.training_step((x, y), 0)
        assert objective.item() == pytest.approx(functional.cross_entropy(net(x), y, weight=weights).item())
        plain = functional.cross_entropy(net(x), y).item()
    data = PreparedDataModule.of_splits(InMemoryDataset(x, y), InMemoryDataset(x, y), batch_size=5)
    trainer = bare_trainer()
    (scores,) = trainer.validate(module, datamodule=data, verbose=False)
    assert scores["val/loss"] == pytest.approx(plain, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# A real training run on the digits, tracked in a temporary SQLite store
# ---------------------------------------------------------------------------------------------------------------
@contextmanager
def sandbox(root: Path) -> Iterator[None]:
    """cwd = root and a private tracking store; process-wide state that fit/evaluate change is put back after.

    Lightning's seed_everything and deterministic mode, and mlflow.set_tracking_uri, change os.environ and torch
    globals for the whole process; restoring them keeps the rest of the test session unaffected.
    """
    import mlflow

    saved_env = dict(os.environ)
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "PIPELINE_DEBUG"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", sqlite_uri(root))
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            os.environ.clear()
            os.environ.update(saved_env)


def shrunk_params(uri: str, experiment: str, run_name: str):
    return load_params(
        REPO / "params.yaml",
        overrides=[
            f"train.max_epochs={MAX_EPOCHS}",
            "train.scheduler=cosine",
            "train.optimizer=adamw",
            "train.lr=0.003",
            "train.batch_size=64",
            "train.monitor=val/loss",
            "train.early_stopping_patience=10",
            "trainer.progress_bar=false",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.strategy=auto",
            "trainer.precision=32-true",
            "model.name=mlp",
            "model.mlp.hidden_dims=[32]",
            f"mlflow.tracking_uri={uri}",
            f"mlflow.experiment_name={experiment}",
            f"mlflow.run_name={run_name}",
        ],
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("training")
    with sandbox(root):
        meta = prepare(DataParams(), root / "prepared")
    return SimpleNamespace(root=root, uri=sqlite_uri(root), prepared=root / "prepared", meta=meta)


@pytest.fixture(scope="module")
def trained(workspace) -> SimpleNamespace:
    from pipeline.stages.train import fit

    ws = workspace
    params = shrunk_params(ws.uri, "pytest-digits", "pytest-fit")
    model_dir, ckpt_dir = ws.root / "model", ws.root / "checkpoints"
    with sandbox(ws.root):
        run_id = fit(params, ws.prepared, model_dir, ckpt_dir)
    return SimpleNamespace(params=params, run_id=run_id, model_dir=model_dir, ckpt_dir=ckpt_dir)


@pytest.fixture(scope="module")
def evaluated(workspace, trained) -> SimpleNamespace:
    from pipeline.stages.evaluate import evaluate

    out = workspace.root / "eval"
    with sandbox(workspace.root):
        summary = evaluate(workspace.prepared, trained.model_dir, out, 256, workspace.uri)
    return SimpleNamespace(summary=summary, out=out)


def test_fit_saves_a_weights_only_model_file(workspace, trained) -> None:
    from pipeline.stages.train import MODEL_FILE

    path = trained.model_dir / MODEL_FILE
    assert path.is_file()
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    assert bundle["model_name"] == "mlp"
    assert bundle["hparams"] == {"hidden_dims": [32], "dropout": 0.1, "embedding_dim": 64}
    assert bundle["input_shape"] == DIGITS_SHAPE
    assert bundle["num_classes"] == NUM_CLASSES
    assert bundle["class_names"] == workspace.meta["class_names"]
    assert bundle["kind"] == "image" and bundle["vocab_size"] is None
    assert all(isinstance(v, torch.Tensor) for v in bundle["state_dict"].values())


def test_model_file_holds_the_best_checkpoint_weights(trained) -> None:
    from pipeline.artifacts import BEST_CHECKPOINT, MODEL_FILE

    best = torch.load(trained.ckpt_dir / BEST_CHECKPOINT, map_location="cpu", weights_only=True)
    expected = {k[len("net.") :]: v for k, v in best["state_dict"].items() if k.startswith("net.")}
    saved = torch.load(trained.model_dir / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
    assert saved.keys() == expected.keys()
    for key in saved:
        assert torch.equal(saved[key], expected[key]), key


def test_trained_model_loads_and_classifies_the_test_split(workspace, trained) -> None:
    from pipeline.stages.train import MODEL_FILE
    from pipeline.training.trained_model import load_trained_model

    net, _bundle = load_trained_model(trained.model_dir / MODEL_FILE)
    assert not net.training
    arrays = read_split(workspace.prepared, "test")
    x, y = torch.from_numpy(arrays["x"]), arrays["y"]
    with torch.no_grad():
        predicted = net(x).argmax(dim=1).numpy()
    # Two epochs of a small MLP already beat chance (0.1) by far.
    assert (predicted == y).mean() > 0.5


def test_fit_writes_the_run_file(workspace, trained) -> None:
    run_file = json.loads((trained.model_dir / "mlflow_run.json").read_text())
    assert run_file == {"run_id": trained.run_id, "tracking_uri": workspace.uri}


def test_fit_run_is_finished_with_params_tags_and_artifacts(workspace, trained) -> None:
    client = MlflowClient(workspace.uri)
    run = client.get_run(trained.run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "pytest-fit"
    assert client.get_experiment(run.info.experiment_id).name == "pytest-digits"
    # The parameters this run uses, under their dotted names (evaluate.* are evaluate's to log: they may change alone).
    assert set(run.data.params) == set(used_params(trained.params, workspace.meta["kind"]))
    assert run.data.tags["config.hash"] == config_hash(trained.params)
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["train.max_epochs"] == str(MAX_EPOCHS)
    assert run.data.params["model.name"] == "mlp"
    assert run.data.params["model.mlp.hidden_dims"] == "[32]"
    assert run.data.tags["data.dataset"] == "digits"
    assert run.data.tags["data.digest"] == workspace.meta["digest"]
    assert run.data.tags["model.name"] == "mlp"
    assert {a.path for a in client.list_artifacts(trained.run_id, "weights")} == {
        "weights/model.pt",
        "weights/mlflow_run.json",
    }
    # The artifacts went to the store beside the temporary root, not anywhere else.
    assert run.info.artifact_uri.startswith((workspace.root / "mlartifacts").as_uri())


@pytest.mark.parametrize("metric", ["train/loss", "val/loss", "val/accuracy", "val/f1_macro", "lr"])
def test_fit_logs_one_value_per_epoch(workspace, trained, metric: str) -> None:
    history = MlflowClient(workspace.uri).get_metric_history(trained.run_id, metric)
    assert len(history) == MAX_EPOCHS
    assert [m.step for m in history] == list(range(MAX_EPOCHS))  # the epoch is the step: charts read epochs
    values = [m.value for m in history]
    assert all(np.isfinite(values))
    if metric.endswith("loss"):
        assert values[-1] < values[0]  # it learns
    else:
        assert all(0.0 <= v <= 1.0 for v in values)


def test_fit_follows_the_cosine_schedule(workspace, trained) -> None:
    client = MlflowClient(workspace.uri)
    lrs = [m.value for m in client.get_metric_history(trained.run_id, "lr")]  # one name whatever the optimizer
    # Cosine from 0.003 to 0 over 2 epochs: 0.003 in epoch 0, 0.003 * (1 + cos(pi / 2)) / 2 = 0.0015 in epoch 1.
    assert lrs == pytest.approx([0.003, 0.0015])


def test_nothing_is_written_outside_the_temporary_root(workspace, trained) -> None:
    names = {p.name for p in workspace.root.iterdir()}
    assert {"prepared", "model", "checkpoints", "mlflow.db", "mlartifacts"} <= names
    assert "mlruns" not in names and "lightning_logs" not in names


def test_evaluate_writes_outputs(workspace, evaluated) -> None:
    out = evaluated.out
    n_test = workspace.meta["split_sizes"]["test"]
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "baseline.json",
        "per_class.json",
        "confusion.json",
        "confusion_matrix.png",
        "classification_report.txt",
    }

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == evaluated.summary
    assert list(metrics) == list(HEADLINE_METRICS)  # the headline only: `dvc metrics show` stays narrow
    per_class = json.loads((out / "per_class.json").read_text())
    assert [row["class"] for row in per_class] == workspace.meta["class_names"]
    assert sum(row["support"] for row in per_class) == n_test

    rows = json.loads((out / "confusion.json").read_text())
    assert len(rows) == n_test
    assert all(set(row) == {"actual", "predicted"} for row in rows)
    assert {row["actual"] for row in rows} <= set(workspace.meta["class_names"])
    assert [row["actual"] for row in rows] == [str(c) for c in read_split(workspace.prepared, "test")["y"]]
    accuracy = sum(row["actual"] == row["predicted"] for row in rows) / n_test
    assert metrics["accuracy"] == pytest.approx(accuracy)

    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_logs_into_the_training_run(workspace, trained, evaluated) -> None:
    client = MlflowClient(workspace.uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] == pytest.approx(evaluated.summary["accuracy"])
    assert run.data.metrics["test/f1_macro"] == pytest.approx(evaluated.summary["f1_macro"])
    assert not [k for k in run.data.metrics if k.startswith("test/") and k[len("test/") :] not in HEADLINE_METRICS]
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/metrics.json",
        "evaluation/confusion.json",
        "evaluation/per_class.json",
        "evaluation/per_class_table.json",
    } <= artifacts
    # The confusion matrix at the artifact root (what the UI's compare view offers) and as an MLflow image.
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(trained.run_id)}
    images = [a.path for a in client.list_artifacts(trained.run_id, "images")]
    assert any(path.startswith("images/confusion_matrix+step+0+") and path.endswith(".png") for path in images)
    # The baseline beside the model, on the same test rows: in the run and in the DVC metrics file.
    compared = json.loads((evaluated.out / "baseline.json").read_text())
    assert run.data.params["baseline.model"] == "LogisticRegression"
    assert run.data.metrics["baseline/f1_macro"] == pytest.approx(compared["f1_macro"]) and compared["f1_macro"] > 0.9
    assert compared["model_f1_gain"] == pytest.approx(evaluated.summary["f1_macro"] - compared["f1_macro"])
    assert "evaluation/baseline.json" in artifacts
    # Still one run: evaluate continued train's run instead of starting another.
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_failing_training_marks_the_run_failed(workspace, tmp_path: Path) -> None:
    from pipeline.stages.train import fit

    # A real failure: one training label is outside the 10 classes, so CrossEntropyLoss raises on its batch.
    bad = tmp_path / "prepared"
    shutil.copytree(workspace.prepared, bad)
    labels = np.load(bad / "train_y.npy")
    labels[0] = NUM_CLASSES
    np.save(bad / "train_y.npy", labels)

    params = shrunk_params(workspace.uri, "pytest-failing", "pytest-fail")
    with sandbox(workspace.root), pytest.raises(IndexError, match="out of bounds"):
        fit(params, bad, tmp_path / "model", tmp_path / "checkpoints")

    assert not (tmp_path / "model" / "model.pt").exists()
    client = MlflowClient(workspace.uri)
    experiment = client.get_experiment_by_name("pytest-failing")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].info.run_name == "pytest-fail"


def test_early_stopping_says_why_on_the_run_and_the_console(tmp_path, capsys, mlflow_store: str):
    from mlflow.tracking import MlflowClient

    from pipeline.config import DataParams, MlflowParams, MLPParams, ModelParams, Params, TrainerParams, TrainParams
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import STOPPED_BECAUSE_TAG, fit

    uri = mlflow_store
    prepare(DataParams(dataset="wine"), tmp_path / "prepared")
    params = Params(  # a learning rate too small to change a prediction: the accuracy never improves
        data=DataParams(dataset="wine"),
        model=ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[8])),
        train=TrainParams(max_epochs=6, batch_size=32, lr=1e-12, monitor="val/accuracy", early_stopping_patience=1),
        trainer=TrainerParams(progress_bar=False),
        mlflow=MlflowParams(tracking_uri=uri, experiment_name="stopping"),
    )
    run_id = fit(params, tmp_path / "prepared", tmp_path / "model", tmp_path / "checkpoints")
    run = MlflowClient(uri).get_run(run_id)
    because = "early stopping: val/accuracy did not improve for 1 epochs"
    assert run.data.tags[STOPPED_BECAUSE_TAG] == because
    assert run.data.metrics["stopped_epoch"] == 1 and run.data.metrics["best_epoch"] == 0
    assert because in capsys.readouterr().out


def test_ema_decay_keeps_the_moving_average_of_the_steps_weights(tmp_path, mlflow_store: str) -> None:
    """With train.ema_decay the checkpoints and model.pt hold the exponential moving average of every step's
    weights (what was validated), not the weights of the last step."""
    import pytorch_lightning as pl

    from pipeline.artifacts import LAST_CHECKPOINT, MODEL_FILE
    from pipeline.config import MlflowParams, ModelParams, Params, TrainerParams
    from pipeline.stages.train import fit

    decay = 0.9
    steps: list[dict[str, torch.Tensor]] = []

    class RecordWeights(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            steps.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    prepare(DataParams(dataset="wine"), tmp_path / "prepared")
    params = Params(
        data=DataParams(dataset="wine"),
        model=ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[8], dropout=0.0)),
        train=TrainParams(max_epochs=3, batch_size=32, lr=0.05, early_stopping_patience=None, ema_decay=decay),
        trainer=TrainerParams(progress_bar=False),
        mlflow=MlflowParams(tracking_uri=mlflow_store, experiment_name="ema"),
    )
    fit(params, tmp_path / "prepared", tmp_path / "model", tmp_path / "checkpoints", [RecordWeights()])

    average = dict(steps[0])  # torch's AveragedModel: the first update copies, then avg = decay avg + (1 - decay) w
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * w for k, w in weights.items()}
    last = torch.load(tmp_path / "checkpoints" / LAST_CHECKPOINT, map_location="cpu", weights_only=True)
    kept = {k[len("net.") :]: v for k, v in last["state_dict"].items() if k.startswith("net.")}
    current = {k[len("net.") :]: v for k, v in last["current_model_state"].items() if k.startswith("net.")}
    for key, value in average.items():
        assert torch.allclose(kept[key], value, atol=1e-6), key
        assert torch.equal(current[key], steps[-1][key]), key  # the raw weights go on, for a resumed run
    assert any(not torch.allclose(kept[k], current[k]) for k in kept)  # averaged: not the last step's weights
    saved = torch.load(tmp_path / "model" / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for key in saved:
        assert torch.equal(saved[key], best[f"net.{key}"]), key


def test_ema_decay_zero_adds_no_averaging() -> None:
    from pytorch_lightning.callbacks import WeightAveraging

    from pipeline.config import Params
    from pipeline.training.builders import new_callbacks

    for decay, expected in ((0.0, 0), (0.99, 1)):
        params = Params(train=TrainParams(monitor="val/loss", ema_decay=decay))
        _, callbacks = new_callbacks(params, Path("unused"))
        assert sum(isinstance(c, WeightAveraging) for c in callbacks) == expected


FAMILY_CLASSES = 4
BATCH = 16
MAX_LEN = 20
VOCAB = 50
TRAIN_STEPS = 30

# name -> (input_shape, vocab_size)
INPUTS = {
    "tabular": ([13], None),
    "grey-image": ([1, 8, 8], None),
    "rgb-image": ([3, 12, 12], None),
    "text": ([MAX_LEN], VOCAB),
}

RNN_SMALL = RNNParams(hidden_size=16, num_layers=2, dropout=0.1, embedding_dim=16)
TRANSFORMER_SMALL = TransformerParams(d_model=16, n_heads=2, num_layers=2, dim_feedforward=32, dropout=0.1)
# variant id -> (registry name, params section); every RNN cell and direction, every transformer pooling.
VARIANTS = {
    "mlp": ("mlp", MLPParams(hidden_dims=[32, 16], dropout=0.1, embedding_dim=16)),
    "cnn": ("cnn", CNNParams(channels=[8, 16], kernel_size=3, hidden_dim=32, dropout=0.1, embedding_dim=16)),
    **{
        f"rnn-{cell}-{'bi' if bi else 'uni'}": ("rnn", dataclasses.replace(RNN_SMALL, cell=cell, bidirectional=bi))
        for cell in ("lstm", "gru")
        for bi in (True, False)
    },
    **{
        f"transformer-{pooling}": ("transformer", dataclasses.replace(TRANSFORMER_SMALL, pooling=pooling))
        for pooling in ("cls", "mean")
    },
}
SEQUENCE_INPUTS = ("grey-image", "rgb-image", "text")
SUPPORTED = {"mlp": tuple(INPUTS), "cnn": SEQUENCE_INPUTS, "rnn": SEQUENCE_INPUTS, "transformer": SEQUENCE_INPUTS}
CASES = [(variant, kind) for variant, (name, _) in VARIANTS.items() for kind in SUPPORTED[name]]
CASE_IDS = [f"{variant}-{kind}" for variant, kind in CASES]


def build(variant: str, kind: str, **overrides) -> nn.Module:
    name, params = VARIANTS[variant]
    input_shape, vocab_size = INPUTS[kind]
    return build_model(
        name, dataclasses.asdict(dataclasses.replace(params, **overrides)), input_shape, FAMILY_CLASSES, vocab_size
    )


def pad(rows: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([row + [PAD_ID] * (length - len(row)) for row in rows], dtype=torch.int64)


def batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch and balanced labels; text has every length from empty (all PAD) to max_len."""
    generator = torch.Generator().manual_seed(0)
    input_shape, vocab_size = INPUTS[kind]
    labels = torch.arange(BATCH) % FAMILY_CLASSES
    if vocab_size is None:
        return torch.randn(BATCH, *input_shape, generator=generator), labels
    lengths = torch.randint(1, MAX_LEN + 1, (BATCH,), generator=generator)
    lengths[0], lengths[1] = 0, MAX_LEN
    tokens = torch.randint(PAD_ID + 1, vocab_size, (BATCH, MAX_LEN), generator=generator)
    tokens[torch.arange(MAX_LEN) >= lengths[:, None]] = PAD_ID
    return tokens, labels


# ---------------------------------------------------------------------------------------------------------------
# The contract with the pipeline
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_constructor_takes_exactly_the_schema_fields(name: str) -> None:
    signature = inspect.signature(REGISTRY[name])
    assert list(signature.parameters)[:3] == ["input_shape", "num_classes", "vocab_size"]
    assert signature.parameters["vocab_size"].default is None
    keyword_only = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == [f.name for f in dataclasses.fields(getattr(ModelParams(), name))]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_schema_defaults_build_for_text(name: str) -> None:
    net = build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [MAX_LEN], FAMILY_CLASSES, VOCAB)
    net.eval()
    with torch.no_grad():
        assert net(batch("text")[0]).shape == (BATCH, FAMILY_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# Every network on every input it supports
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "kind"), CASES, ids=CASE_IDS)
def test_logits_are_finite_and_gradients_reach_every_parameter(variant: str, kind: str) -> None:
    torch.manual_seed(0)
    net = build(variant, kind)
    x, y = batch(kind)

    net.train()
    logits = net(x)
    assert logits.shape == (BATCH, FAMILY_CLASSES)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"

    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (BATCH, FAMILY_CLASSES)
    # Text row 0 is all PAD (an empty text after cleaning).
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("variant", "kind"), CASES, ids=CASE_IDS)
def test_a_few_steps_fit_a_fixed_batch(variant: str, kind: str) -> None:
    # Balanced labels on random inputs: a network whose output ignores its input cannot go below log(classes),
    # so halving the loss shows the input reaches the logits through trainable weights.
    torch.manual_seed(0)
    net = build(variant, kind, dropout=0.0)
    x, y = batch(kind)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------------------------
# The CNN is left out: its convolutions and batch norm turn PAD positions into non-zero features that can win the
# max over time, so extra padding may change its output (as it may for any text CNN without masking).
@pytest.mark.parametrize("variant", [v for v, (name, _) in VARIANTS.items() if name != "cnn"])
def test_trailing_padding_does_not_change_the_output(variant: str) -> None:
    torch.manual_seed(0)
    name, params = VARIANTS[variant]
    net = build_model(name, dataclasses.asdict(params), [30], FAMILY_CLASSES, VOCAB).eval()
    rows = [[5, 7, 9, 11, 13], [], [3] * 20]
    with torch.no_grad():
        short, long = net(pad(rows, 20)), net(pad(rows, 30))
    torch.testing.assert_close(short, long)


@pytest.mark.parametrize("variant", [v for v, (name, _) in VARIANTS.items() if name != "cnn"])
def test_the_pad_embedding_stays_zero_in_training(variant: str) -> None:
    net = build(variant, "text", dropout=0.0)
    x, y = batch("text")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    embedding = next(m for m in net.modules() if isinstance(m, nn.Embedding))
    assert embedding.padding_idx == PAD_ID
    assert torch.count_nonzero(embedding.weight[PAD_ID]) == 0


# ---------------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "rnn", "transformer"])
def test_sequence_models_reject_tabular_input_and_point_to_mlp(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape("model.name: mlp")):
        build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [13], FAMILY_CLASSES)


@pytest.mark.parametrize("name", ["rnn", "transformer"])
def test_sequence_models_say_they_need_sequences(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs sequences \(text, or images"):
        build_model(name, dataclasses.asdict(getattr(ModelParams(), name)), [13], FAMILY_CLASSES)


def test_text_cnn_rejects_more_blocks_than_max_len_can_halve() -> None:
    hparams = {**dataclasses.asdict(ModelParams().cnn), "channels": [4, 4, 4, 4, 4]}  # 20 -> 10 -> 5 -> 2 -> 1 -> 0
    with pytest.raises(ValueError, match=re.escape("at most 4 entries in model.cnn.channels")):
        build_model("cnn", hparams, [MAX_LEN], FAMILY_CLASSES, VOCAB)
    hparams["channels"] = [4, 4, 4, 4]
    net = build_model("cnn", hparams, [MAX_LEN], FAMILY_CLASSES, VOCAB).eval()
    assert net(batch("text")[0]).shape == (BATCH, FAMILY_CLASSES)


@pytest.mark.parametrize("kind", ["grey-image", "text"])
def test_transformer_rejects_d_model_not_divisible_by_n_heads(kind: str) -> None:
    with pytest.raises(ValueError, match=r"n_heads can be one of \[1, 2, 3, 4, 6, 12\]"):
        build("transformer-cls", kind, d_model=12, n_heads=5)


def test_single_layer_rnn_does_not_warn_about_dropout() -> None:
    # PyTorch warns when inter-layer dropout is set on a one-layer RNN; the dropout is for the classifier then.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = build("rnn-lstm-bi", "text", num_layers=1, dropout=0.5)
    assert net.rnn.dropout == 0.0
