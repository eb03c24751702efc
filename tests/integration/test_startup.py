"""Stages import only what they use: evaluate scores and logs a model without Lightning, and the pyfunc model it
logs is code plus data files (MLflow "models from code"), with no pickled object."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import DataParams, MLPParams, ModelParams, TabularParams
from tests.helpers import REPO, animals_table, sqlite_uri, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("startup") / "tabular"
    root.mkdir()
    animals_table().to_csv(root / "animals.csv", index=False)
    prepared, model = train_tiny(
        root,
        DataParams(dataset=str(root / "animals.csv"), tabular=TabularParams(target="label")),
        ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[8], dropout=0.0)),
        max_epochs=1,
    )
    return root, prepared, model


def test_evaluate_never_imports_lightning(trained: tuple[Path, Path, Path]) -> None:
    root, prepared, model = trained
    uri = sqlite_uri(root.parent)
    code = (
        "import sys; from pathlib import Path; from pipeline.stages.evaluate import evaluate; "
        f"evaluate(Path({str(prepared)!r}), Path({str(model)!r}), Path({str(root / 'eval')!r}), 64, {uri!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (root / "eval" / "metrics.json").is_file()


def test_pyfunc_model_is_logged_from_code_without_a_pickle(trained: tuple[Path, Path, Path]) -> None:
    import mlflow

    from pipeline.serving.pyfunc import log_pyfunc_model

    root, prepared, model = trained
    mlflow.set_tracking_uri(sqlite_uri(root.parent))
    with mlflow.start_run(experiment_id=mlflow.set_experiment("startup-tests").experiment_id):
        info = log_pyfunc_model(prepared, model)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "downloaded")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    flavor = info.flavors["python_function"]
    assert flavor.get("model_code_path"), flavor
    assert info.signature is not None


def test_step_timer_reports_every_training_step_inside_fit(tmp_path: Path) -> None:
    """What bench/pipeline_startup.py reads through PIPELINE_STEP_TIMES."""
    from pipeline.config import MlflowParams, Params, TrainerParams, TrainParams
    from pipeline.files import read_json
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import fit, step_timer

    animals_table().to_csv(tmp_path / "animals.csv", index=False)
    data = DataParams(dataset=str(tmp_path / "animals.csv"), tabular=TabularParams(target="label"))
    meta = prepare(data, tmp_path / "prepared")
    params = Params(
        data=data,
        model=ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[8])),
        train=TrainParams(max_epochs=2, batch_size=32, early_stopping_patience=None),
        trainer=TrainerParams(progress_bar=False),
        mlflow=MlflowParams(tracking_uri=sqlite_uri(tmp_path), experiment_name="timer"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.delenv("DVC_ROOT", raising=False)
        fit(
            params,
            tmp_path / "prepared",
            tmp_path / "model",
            tmp_path / "checkpoints",
            extra_callbacks=[step_timer(tmp_path / "steps.json")],
        )
    times = read_json(tmp_path / "steps.json")
    assert times["steps"] == 2 * -(-meta["split_sizes"]["train"] // 32)
    assert 0 < times["step_s"] <= times["fit_s"]
