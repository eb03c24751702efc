"""The epoch metrics the LightningModule logs (loss, accuracy, macro F1 from running confusion counts) against
scikit-learn and torchmetrics on the same predictions, and the progress bar that shows them."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from pipeline.config import TrainParams
from pipeline.training.module import Classifier, EpochScores
from tests.helpers import bare_trainer

NUM_CLASSES = 5
# Three batches: class 3 is a label in the first batch only; class 2 is predicted but never a label; class 4 never
# occurs at all, neither as a label nor as a prediction, in any batch of the epoch.
BATCHES = [
    ([0, 1, 3, 3, 0], [0, 1, 3, 0, 2]),
    ([1, 1, 0, 0], [1, 0, 0, 2]),
    ([0, 1, 1], [0, 1, 1]),
]


def batch_tensors(labels: list[int], preds: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    losses = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) * 3
    return torch.tensor(preds), torch.tensor(labels), losses


def test_epoch_scores_equal_scikit_learn_with_classes_absent_from_a_batch_and_the_epoch() -> None:
    scores = EpochScores(NUM_CLASSES, "train/")
    all_losses = []
    for seed, (labels, preds) in enumerate(BATCHES):
        p, y, losses = batch_tensors(labels, preds, seed)
        scores.update(p, y, losses)
        all_losses.append(losses)
    labels = [label for batch, _ in BATCHES for label in batch]
    preds = [pred for _, batch in BATCHES for pred in batch]
    values = {name: value.item() for name, value in scores.compute().items()}

    assert set(values) == {"train/loss", "train/accuracy", "train/f1_macro"}
    assert values["train/accuracy"] == pytest.approx(accuracy_score(labels, preds), rel=1e-6)
    # scikit-learn's default labels are those that occur as label or prediction: class 4 is left out, class 2 (only
    # ever predicted) counts with F1 0
    assert values["train/f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"), rel=1e-6)
    assert values["train/loss"] == pytest.approx(torch.cat(all_losses).mean().item(), rel=1e-6)


def test_epoch_scores_equal_the_torchmetrics_scores_logged_before() -> None:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    scores = EpochScores(NUM_CLASSES, "val/")
    accuracy = MulticlassAccuracy(NUM_CLASSES, average="micro")
    f1 = MulticlassF1Score(NUM_CLASSES, average="macro")
    for seed, (labels, preds) in enumerate(BATCHES):
        p, y, losses = batch_tensors(labels, preds, seed)
        scores.update(p, y, losses)
        accuracy.update(p, y)
        f1.update(p, y)
    values = scores.compute()
    assert values["val/accuracy"].item() == pytest.approx(accuracy.compute().item(), rel=1e-6)
    assert values["val/f1_macro"].item() == pytest.approx(f1.compute().item(), rel=1e-6)


def test_epoch_scores_start_from_zero_after_reset() -> None:
    scores = EpochScores(NUM_CLASSES, "val/")
    scores.update(*batch_tensors([0, 0], [1, 1], 0))
    scores.reset()
    labels, preds = BATCHES[2]
    p, y, losses = batch_tensors(labels, preds, 2)
    scores.update(p, y, losses)
    values = scores.compute()
    assert values["val/accuracy"].item() == 1.0
    assert values["val/f1_macro"].item() == 1.0
    assert values["val/loss"].item() == pytest.approx(losses.mean().item(), rel=1e-6)


def test_validation_logs_the_scores_of_the_network_predictions_over_uneven_batches() -> None:

    from pipeline.training.datamodule import InMemoryDataset, PreparedDataModule

    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, NUM_CLASSES), torch.randn(11, 4)
    y = torch.tensor([0, 1, 1, 3, 0, 1, 0, 3, 1, 0, 1])  # classes 2 and 4 never labels
    data = PreparedDataModule.of_splits(InMemoryDataset(x, y), InMemoryDataset(x, y), batch_size=4)  # 4, 4, 3
    trainer = bare_trainer()
    module = Classifier(net, NUM_CLASSES, TrainParams())
    first, second = (trainer.validate(module, datamodule=data, verbose=False)[0] for _ in range(2))
    with torch.no_grad():
        preds = net(x).argmax(dim=1)
    assert first["val/accuracy"] == pytest.approx(accuracy_score(y, preds), rel=1e-6)
    assert first["val/f1_macro"] == pytest.approx(f1_score(y, preds, average="macro"), rel=1e-6)
    assert second == first  # each epoch starts from empty counts


def test_progress_bar_shows_every_epoch_complete_with_its_metrics(tmp_path, capsys) -> None:
    import pytorch_lightning as pl

    from pipeline import console
    from pipeline.training.datamodule import InMemoryDataset, PreparedDataModule

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    data = PreparedDataModule.of_splits(InMemoryDataset(x, y), InMemoryDataset(x, y), batch_size=4)  # 16 steps
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[console.progress_bar()],
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Classifier(torch.nn.Linear(4, 3), 3, TrainParams()), datamodule=data)
    console_text = capsys.readouterr().out  # Lightning's bars write to stdout
    for epoch in (0, 1):
        assert f"Epoch {epoch}: 100%|██████████| 16/16" in console_text
    assert "val_loss=" in console_text and "train_accuracy=" in console_text


def test_a_non_finite_training_loss_stops_at_that_step_naming_the_learning_rate() -> None:
    """The check the nan-loss command test (slow) runs end to end: the first non-finite step raises, with the fix."""
    from pipeline.training.module import NonFiniteLoss

    net = torch.nn.Linear(4, 3)
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    module = Classifier(net, 3, TrainParams(lr=0.5))
    batch = (torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(NonFiniteLoss, match=r"training loss is nan at epoch 0, step 0 \(batch 0\).*train\.lr is 0\.5"):
        module.training_step(batch, 0)
