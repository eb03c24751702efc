"""`python -m pipeline.stages.tune`: the tune.space checks, a real study on breast_cancer (nested MLflow runs, a pruned
trial, resumption, the best setting as a DVC experiment), and two workers sharing a study in PostgreSQL."""

from __future__ import annotations

import json
import subprocess

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.config import ParamsError, TuneParams, load_params
from pipeline.errors import PipelineError
from pipeline.stages.tune import JOURNAL_FILE, open_study, threads_per_worker
from pipeline.uris import masked_uri as masked
from tests.helpers import REPO, edit_params, free_port, run, sqlite_uri, stage_command, stage_env

PARAMS = str(REPO / "params.yaml")
SPACE = {"train.lr": {"low": 1e-4, "high": 3e-2, "log": True}, "model.mlp.hidden_dims": {"choices": [[8], [16, 8]]}}
# Tiny and fast: breast_cancer, a one-layer MLP, two epochs per trial.
TINY_STUDY = {
    "data.dataset": "breast_cancer",
    "model.name": "mlp",
    "model.mlp.hidden_dims": [8],
    "train.max_epochs": 2,
    "train.early_stopping_patience": None,
    "mlflow.experiment_name": "bc",
    "tune.space": SPACE,
    "tune.pruner": "median",
    "tune.pruner_startup_trials": 1,
    "tune.pruner_warmup_epochs": 0,
}


def commit(repo, message: str) -> None:
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qam", message], repo)


def with_space(tmp_path, space: str) -> str:
    """A copy of params.yaml whose tune.space is `space` (YAML), as a user would write it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"]["space"] = yaml.safe_load(space)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def refusal(*overrides: str, params: str = PARAMS) -> str:
    with pytest.raises(ParamsError) as caught:
        load_params(params, list(overrides))
    return str(caught.value)


def test_a_valid_space_loads_with_its_types(tmp_path):
    space = (
        "{train.lr: {low: 1.0e-4, high: 0.1, log: true}, train.batch_size: {low: 16, high: 128, step: 16}, "
        "model.mlp.hidden_dims: {choices: [[64], [128, 64]]}, train.optimizer: {choices: [adam, sgd]}}"
    )
    tune = load_params(with_space(tmp_path, space)).tune
    assert tune.space["model.mlp.hidden_dims"] == {"choices": [[64], [128, 64]]}
    assert tune.space["train.batch_size"]["step"] == 16


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("{train.lrr: {low: 0.001, high: 0.1}}", "train.lrr: unknown key. Did you mean 'train.lr'?"),
        ("{train.batch_size: {low: 0.5, high: 64}}", "train.batch_size: 0.5 is not an integer"),
        ("{train.optimizer: {low: 1, high: 2}}", "train.optimizer is a string, not a number: give it {choices"),
        ("{train.optimizer: {choices: [adam, adamm]}}", "'adamm' is not one of sgd, adam, adamw"),
        ("{model.mlp.dropout: {low: 0.0, high: 1.5}}", "model.mlp.dropout: must be less than 1, got 1.5"),
        ("{model.mlp.hidden_dims: {choices: [[64], [0]]}}", "model.mlp.hidden_dims: every size must be > 0"),
        ("{train.lr: {low: 0.1, high: 0.001}}", "low (0.1) must be below high (0.001)"),
        ("{train.lr: {low: 0.001, high: 0.1, scale: log}}", "expected {low: .., high: ..}"),
        ("{data.seed: {low: 1, high: 9}}", "only keys under model and train can be searched"),
        ("{train.monitor: {choices: [val/acc]}}", "trials monitor tune.metric"),
        ("{model.mlp: {choices: [1]}}", "model.mlp: expected a section"),
    ],
)
def test_a_bad_space_is_refused_naming_the_key(tmp_path, space, expected):
    message = refusal(params=with_space(tmp_path, space))
    assert expected in message
    assert "tune.space." in message


def test_other_tune_settings_are_checked():
    assert "contradicts tune.metric 'val/loss'" in refusal("tune.direction=maximize")
    assert "tune.n_trials and tune.timeout_s are both null" in refusal("tune.n_trials=null")
    assert "tune.study_name" in refusal("tune.study_name=my study")
    assert "tune.storage" in refusal("tune.storage=redis://localhost")
    assert "tune.metric: 'train/loss' is not one of val/loss" in refusal("tune.metric=train/loss")


def test_storage_password_is_masked_and_threads_split_the_cores():
    assert masked("postgresql://tuner:s3cret@db.example:5432/optuna") == "postgresql://tuner:***@db.example:5432/optuna"
    assert masked("postgresql://tuner@db/optuna") == "postgresql://tuner@db/optuna"
    assert threads_per_worker(1) >= threads_per_worker(2) >= 1
    assert threads_per_worker(10_000) == 1


def test_an_unreachable_storage_is_one_message_without_its_password(capsys):
    pytest.importorskip("psycopg2")
    url = f"postgresql://tuner:s3cret@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(PipelineError) as caught:
        open_study(TuneParams(storage=url))
    message = str(caught.value) + capsys.readouterr().err
    assert "postgresql://tuner:***@127.0.0.1" in message and "cannot be reached" in message
    assert "s3cret" not in message


def test_a_bad_space_stops_the_command_before_any_trial(repo_copy):
    edit_params(repo_copy, {"tune.space": {"train.batch_size": {"low": 0.5, "high": 64}}})
    result = run(stage_command("tune", "--no-final"), repo_copy, check=False)
    assert result.returncode == 2
    assert "tune.space.train.batch_size" in result.stderr and "Traceback" not in result.stderr
    assert not (repo_copy / JOURNAL_FILE).exists() and not (repo_copy / "mlflow.db").exists()


def trial_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(study runs, trial runs) of an experiment."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return (
        [
            r
            for r in runs
            if "tune.trial" not in r.data.tags and "tune.study" in r.data.tags and "dvc.exp_name" not in r.data.tags
        ],
        [r for r in runs if "tune.trial" in r.data.tags],
    )


@pytest.mark.slow  # a real study and a DVC experiment: 2-5 minutes on 2 cores
def test_study_nests_trials_prunes_resumes_and_trains_the_best_as_a_dvc_experiment(repo_copy):
    edit_params(repo_copy, {**TINY_STUDY, "tune.n_trials": 2})
    commit(repo_copy, "tiny study")
    run(["dvc", "repro", "prepare"], repo_copy)
    # Two settings first, the second far too slow a learner: after its first epoch it is behind the median of
    # the first trial and pruned (the median pruner, startup 1, no warm-up).
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(repo_copy / JOURNAL_FILE)))
    study = optuna.create_study(storage=storage, study_name="tune", direction="minimize")
    study.enqueue_trial({"train.lr": 0.02, "model.mlp.hidden_dims": "[16, 8]"})
    study.enqueue_trial({"train.lr": 1e-4, "model.mlp.hidden_dims": "[8]"})

    first = run(stage_command("tune", "--no-final"), repo_copy, OMP_NUM_THREADS="1")
    assert "tune: trial 1 pruned at epoch 0" in first.stdout
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].params == {"train.lr": 0.02, "model.mlp.hidden_dims": "[16, 8]"}

    client = MlflowClient(sqlite_uri(repo_copy))
    (parent,), children = trial_runs(client, "bc")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.trial"] == "0" and parent.data.tags["best.model.mlp.hidden_dims"] == "[16, 8]"
    assert parent.data.metrics["best/val/loss"] == pytest.approx(trials[0].value)
    assert parent.data.metrics["trials/pruned"] == 1
    by_trial = {r.data.tags["tune.trial"]: r for r in children}
    assert set(by_trial) == {"0", "1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert by_trial["0"].data.tags["tune.state"] == "complete" and by_trial["1"].data.tags["tune.state"] == "pruned"
    assert by_trial["0"].data.params["model.mlp.hidden_dims"] == "[16, 8]"
    assert by_trial["0"].data.params["train.monitor"] == "val/loss"
    assert not any(key.startswith("tune.") for key in by_trial["0"].data.params)
    assert len(client.get_metric_history(by_trial["0"].info.run_id, "val/loss")) == 2  # one per epoch
    assert len(client.get_metric_history(by_trial["1"].info.run_id, "val/loss")) == 1  # pruned after the first

    # Rerun with a larger budget: the same study and study run continue; then the best is a DVC experiment.
    edit_params(repo_copy, {"tune.n_trials": 3})
    commit(repo_copy, "one more trial")
    second = run(stage_command("tune"), repo_copy, OMP_NUM_THREADS="1")
    assert "tune: trial 2" in second.stdout and "tune: trial 0" not in second.stdout
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert len(trials) == 3 and trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED)
    best = optuna.load_study(study_name="tune", storage=storage).best_trial
    (parent_again,), children = trial_runs(client, "bc")
    assert parent_again.info.run_id == parent.info.run_id and parent_again.info.status == "FINISHED"
    assert len(children) == 3
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "tune")] == ["tune/summary.json"]

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo_copy).stdout)
    experiments = {
        rev["name"]: rev["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        for rev in exp["revs"]
    }
    assert set(experiments) == {"tune"}
    exp_params = experiments["tune"]["params"]["params.yaml"]["data"]
    assert exp_params["train"]["lr"] == pytest.approx(best.params["train.lr"])
    assert exp_params["model"]["mlp"]["hidden_dims"] == json.loads(best.params["model.mlp.hidden_dims"])
    assert exp_params["train"]["monitor"] == "val/loss"
    assert "accuracy" in experiments["tune"]["metrics"]["outputs/eval/metrics.json"]["data"]
    final_run = parent_again.data.tags["tune.final_run_id"]
    assert client.get_run(final_run).data.tags["tune.study"] == "tune"
    assert client.get_run(final_run).data.tags["dvc.exp_name"] == "tune"
    assert not [r for r in client.search_runs([parent.info.experiment_id]) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_two_workers_share_one_study_in_postgresql(repo_copy, postgres):
    import psycopg2

    # Optuna and MLflow each keep an alembic_version table: one database each.
    conn = psycopg2.connect(postgres)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE optuna")
    conn.close()
    optuna_url = postgres.rsplit("/", 1)[0] + "/optuna"
    mlflow_url = postgres.replace("postgresql://", "postgresql+psycopg2://", 1)
    n_trials = 4
    edit_params(
        repo_copy,
        {
            **TINY_STUDY,
            "tune.n_trials": n_trials,
            "tune.storage": optuna_url,
            "tune.workers": 2,
            "tune.pruner": "none",
            "mlflow.tracking_uri": mlflow_url,
        },
    )
    commit(repo_copy, "shared study")
    run(["dvc", "repro", "prepare"], repo_copy)
    # A team's tracking database exists before its workers start (MLflow's first-time table creation is not safe
    # to race; Optuna's is retried by tune).
    MlflowClient(mlflow_url).search_experiments()

    workers = [
        subprocess.Popen(
            stage_command("tune", "--no-final"),
            cwd=repo_copy,
            env=stage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-4000:]
        assert "tune: trial" in output  # each worker ran trials

    study = optuna.load_study(study_name="tune", storage=optuna_url.replace("postgresql://", "postgresql+psycopg2://"))
    trials = study.get_trials()
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    ran = [line.split()[2] for output in outputs for line in output.splitlines() if line.startswith("tune: trial")]
    assert sorted(ran, key=int) == [str(n) for n in range(n_trials)]  # every trial ran in exactly one worker

    client = MlflowClient(mlflow_url)
    (parent,), children = trial_runs(client, "bc")
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["tune.trial"]) for r in children) == list(range(n_trials))
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" and r.data.tags["tune.state"] == "complete" for r in children)
