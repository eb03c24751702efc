"""The trained model as an MLflow pyfunc model that takes raw inputs, with the fitted preprocessing bundled.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")   # or models:/<registered name>/<version>
    model.predict(raw)   # tables: a DataFrame with the training feature columns; text: a DataFrame with a `text`
                         # column; images: an array (n, height, width) or (n, channels, height, width)

It answers with the same table as `python -m pipeline.stages.predict`: id, predicted class, one probability per class.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.artifacts import EXAMPLE_FILE, PREPROCESSING_FILES, read_meta
from pipeline.files import read_json

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "omegaconf", "pillow", "skops", "pyarrow")


class PipelineModel(PythonModel):
    # No type hints on these two: MLflow would read them as an input schema of its own. MLflow's check for them
    # would only warn, once per process, that they are missing: the signature is given when the model is logged.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from pipeline.serving.predictor import Predictor

        self.predictor = Predictor(Path(context.artifacts["preprocessing"]), Path(context.artifacts["model"]))

    def predict(self, context, model_input, params=None):
        inputs = raw_inputs(model_input, self.predictor.meta)
        return self.predictor.predict(inputs, [str(i) for i in range(len(inputs))], source="model input")


def raw_inputs(model_input: Any, meta: dict[str, Any]) -> Any:
    """pyfunc's input in the form the kind's preprocessor takes."""
    from pipeline.data.image import new_array_images
    from pipeline.data.tabular import training_columns

    kind = meta["kind"]
    if kind == "tabular":
        return training_columns(pd.DataFrame(model_input), meta, "model input")
    if kind == "text":
        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        return [str(t) for t in texts]
    return new_array_images(model_input, meta, "model input")


def input_example(prepared_dir: Path, meta: dict[str, Any]) -> Any:
    data = read_json(prepared_dir / EXAMPLE_FILE)
    if meta["kind"] == "tabular":
        return pd.DataFrame(data)
    if meta["kind"] == "text":
        return pd.DataFrame({"text": data})
    return np.asarray(data, dtype=np.float32)


def log_pyfunc_model(prepared_dir: Path, model_dir: Path, name: str = "model") -> Any:
    """Log into the active run; returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    from pipeline.serving.predictor import Predictor

    meta = read_meta(prepared_dir)
    example = input_example(prepared_dir, meta)
    output = Predictor(prepared_dir, model_dir, meta).predict(
        raw_inputs(example, meta), [str(i) for i in range(len(example))]
    )
    with tempfile.TemporaryDirectory() as tmp:
        preprocessing = Path(tmp) / "preprocessing"
        preprocessing.mkdir()
        for file in PREPROCESSING_FILES:  # not the splits: only what prediction needs
            if (prepared_dir / file).is_file():
                shutil.copy(prepared_dir / file, preprocessing / file)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),  # code, not a CloudPickle of an instance
            artifacts={"preprocessing": str(preprocessing), "model": str(model_dir)},
            code_paths=[str(PACKAGE_ROOT / "pipeline"), str(PACKAGE_ROOT / "models")],
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[f"{p}=={importlib.metadata.version(p).split('+')[0]}" for p in REQUIREMENTS],
        )


def register(model_uri: str, name: str, metrics: dict[str, float]) -> Any:
    """A new version of registered model `name`, tagged with the test metrics it was evaluated with."""
    from mlflow import MlflowClient

    version = mlflow.register_model(model_uri, name)
    client = MlflowClient()
    for key, value in metrics.items():
        client.set_model_version_tag(name, version.version, key, f"{value:.6g}")
    return version
