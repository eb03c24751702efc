"""Scoring a trained model: metrics, the confusion matrix, the classical baseline."""
