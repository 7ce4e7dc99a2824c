"""Evaluation metrics for semi-supervised models."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import log_loss as sk_log_loss

from .models.base import SemiSupervisedModel


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose most probable class is the true one."""
    if len(y) == 0:
        return float("nan")
    return (probs.argmax(-1).cpu() == y.cpu()).float().mean().item()


def log_loss(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (scikit-learn's log_loss)."""
    p = probs.detach().cpu().double().numpy()
    p = p / p.sum(1, keepdims=True)  # float32 rows sum to 1 only up to rounding
    return float(sk_log_loss(y.cpu().numpy(), p, labels=np.arange(p.shape[1])))


@torch.no_grad()
def mean_elbo(model: SemiSupervisedModel, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean per-example ELBO of unlabelled inputs (U(x) for M2), one z sample per row.

    Classification terms apply to labelled rows only, so they are not part of this number.
    """
    if len(x) == 0:
        return float("nan")
    elbo = model.make_elbo()
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for chunk in x.split(batch_size):
            unlabelled = torch.full((len(chunk),), -1, dtype=torch.long)
            total += elbo.loss(model.model, model.guide, chunk, unlabelled)
    finally:
        model.train(was_training)
    return -total / len(x)


def classification_report(model: SemiSupervisedModel, data) -> dict[str, float]:
    """Validation and test accuracy plus the validation ELBO: the trainer's default evaluation."""
    val_probs = model.classify(data.x_val) if len(data.x_val) else None
    test_probs = model.classify(data.x_test)
    return {
        "elbo": mean_elbo(model, data.x_val if len(data.x_val) else data.x_test),
        "val_accuracy": accuracy(val_probs, data.y_val) if val_probs is not None else float("nan"),
        "test_accuracy": accuracy(test_probs, data.y_test),
        "test_log_loss": log_loss(test_probs, data.y_test),
    }
