"""The pyfunc model's code (MLflow "models from code"): MLflow runs this file to build the model each time it
loads it, so the logged model holds code and data files only, no pickled object to execute on load."""

from mlflow.models import set_model

from pipeline.serving.pyfunc import PipelineModel

set_model(PipelineModel())
