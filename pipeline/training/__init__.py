"""The training machinery: LightningModule, DataModule, builders, checkpoints/resume, cross-validation."""
