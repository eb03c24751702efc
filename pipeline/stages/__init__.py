"""The stage entry points: one module per `python -m pipeline.stages.<name>` command."""
