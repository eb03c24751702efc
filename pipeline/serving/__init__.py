"""A trained model as a predictor: batch predict and the MLflow pyfunc model."""
