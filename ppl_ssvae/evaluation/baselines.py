"""Supervised baselines: a model's own classifier trained on the labelled rows alone.

Jurasiński (sec 5.1, Table 1) measures every semi-supervised model against "a fully
supervised neural network trained only on the 100 labeled data points" (74.7% on MNIST):
what the unlabelled rows add is the gap between the two. Here that network is the model's
own classification path, so the baseline has the same modules, the same initial weights
when built with the same seed, and the same prediction rule (``model.classify``) as the
semi-supervised model it is compared with:

- the latent classifier (``latent``, ``latent-simplified``): ``x -> q(z|x) -> p(y|z)``;
- M2 and GM-DGM (guide ``q(y|x) q(z|x, y)``): the classifier ``q(y|x)`` (Jurasiński sec
  3.1, Fig 3d: "the same neural network ... trained on the labeled data points only").
  Trained in place, the model then holds that classifier, so a ``fit`` of the same model
  afterwards starts M2 "with a classifier initialized to optimal values" (sec 3.1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pyro
import torch
from torch import nn

from ..data import SemiSupervisedData
from ..errors import UserError
from ..guides.categorical_gaussian import CategoricalGaussianGuide
from ..models.base import SemiSupervisedModel
from ..training import FitResult, FitSettings, RestoreBestWeights, Trainer
from ..training.standard import BestEpoch, Evaluation, NonFiniteGuard
from .metrics import accuracy, log_loss


def has_baseline(model: SemiSupervisedModel) -> bool:
    """Whether :func:`fit_labelled_only` can train ``model``'s classifier: a latent
    classifier, or a model whose guide is ``q(y|x) q(z|x, y)`` (M2, GM-DGM)."""
    return model.classifier_on_latent or isinstance(
        getattr(model, "q", None), CategoricalGaussianGuide
    )


def classifier_modules(model: SemiSupervisedModel) -> nn.ModuleList:
    """The modules ``model.classify`` runs: the encoder q(z|x) and the head p(y|z) of a
    latent classifier; q(y|x) of M2 / GM-DGM.

    The decoder p(x|y, z) (or p(x|z)), and M2's q(z|x, y), are not among them: they take
    no part in prediction.
    """
    if model.classifier_on_latent:
        return nn.ModuleList([model.q.q_z, model.p_y])
    return nn.ModuleList([model.q.q_y])


def classifier_log_prob(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``log p(y|x)`` per row under the model's classifier, differentiable in its parameters.

    M2 / GM-DGM: ``log q(y|x)``, exactly. Latent classifier: ``p(y|x) ~= (1/N) sum_i
    p(y|z_i)`` with ``z_i ~ q(z|x)`` and ``N = classify_samples``: the rule of
    ``LatentClassifier._class_probs`` (Jurasiński sec 4.1), but with fresh
    reparameterised draws (``rsample``) so the gradient reaches the encoder.
    """
    if not model.classifier_on_latent:
        return model.q.q_y(x).log_prob(y)
    z = model.q.q_z(x).rsample((model.config.classify_samples,))  # (N, B, Z)
    log_p = model.p_y(z).log_prob(y)  # (N, B)
    return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])


def fit_labelled_only(
    model: SemiSupervisedModel,
    data: SemiSupervisedData,
    *,
    epochs: int = 500,
    lr: float = 1e-3,
    batch_size: int = 100,
    binarize: bool | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> FitResult:
    """Train the model's classification path on the labelled rows alone.

    The supervised baseline of Jurasiński sec 5.1 / Table 1 (and sec 3.1, Fig 3d, for
    M2), built from the model itself: only the parameters ``model.classify`` uses
    (:func:`classifier_modules`: q(z|x) and p(y|z), or M2's q(y|x)) are trained, by the
    library's loop (``Trainer``, Adam), on cross-entropy only: minimising ``-log p(y|x)``
    of :func:`classifier_log_prob` over ``data.x_train[labelled_mask]``. Unlabelled rows
    are never read, and the decoder (and M2's q(z|x, y)) is left as it was built.

    In a latent classifier z is sampled, not set to its mean: the model's classifier averages p(y|z_i) over
    ``classify_samples`` draws z_i ~ q(z|x) at prediction time, so the baseline is trained
    on that same averaged prediction (fresh reparameterised draws each step) and
    evaluated with ``model.classify`` itself (fixed-seed draws), exactly as the
    semi-supervised model is. (With no KL term, nothing stops q(z|x) from narrowing, and
    the trained baseline is close to deterministic.)

    After every epoch (one pass over the labelled rows) it records train, validation and
    test accuracy and test log loss; the epoch with the best validation accuracy is the
    result's ``best``, as in ``ppl_ssvae.training.fit``, and its weights are loaded back into
    ``model`` before returning.

    Args:
        model: a ``latent``, ``latent-simplified``, ``m2`` or ``gmdgm`` model (not one
            with an auxiliary latent: its q(y|a, x) needs a), trained in place.
        data: the semi-supervised split; its validation rows select the epoch.
        epochs: passes over the labelled rows.
        lr: Adam's learning rate (Jurasiński App. B: 1e-3).
        batch_size: labelled rows per step (his labelled batch is 100).
        binarize: draw a fresh Bernoulli image per step, as ``fit`` does for the
            semi-supervised model's labelled rows; None: exactly when the likelihood is
            Bernoulli, so both classifiers are trained on the same kind of input.
        seed: seeds the order of rows, the binarisation and the z draws (the initial
            weights are the model's as built).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        A ``FitResult`` whose ``history`` has one dict per epoch: ``epoch``, ``train_loss``,
        ``train_accuracy``, ``val_accuracy``, ``test_accuracy``, ``test_log_loss``,
        ``epoch_cpu_seconds``, ``elapsed_seconds``, ``elapsed_cpu_seconds``.
    """
    if not has_baseline(model):
        raise UserError(
            f"fit_labelled_only trains the p(y|z) classifier of a latent-classifier model "
            f"('latent', 'latent-simplified') or the q(y|x) of 'm2' / 'gmdgm'; got "
            f"{type(model).__name__}"
        )
    if epochs < 0:
        raise UserError(f"epochs={epochs} must be >= 0")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be >= 1")
    if len(data.x_val) == 0:
        raise UserError("the split has no validation rows to select the baseline's epoch by")
    if data.num_classes > model.config.num_classes:
        raise UserError(
            f"the data has {data.num_classes} classes but the model only {model.config.num_classes}"
        )
    keep = data.labelled_mask
    if not keep.any():
        raise UserError("the split has no labelled rows to train the baseline on")
    # Only the labelled rows are taken (and checked): nothing else of x_train is read.
    x_l, y_l = data.x_train[keep], data.y_train[keep]
    model.check_x(x_l)
    model.check_y(y_l, len(x_l))
    if binarize is None:
        binarize = model.config.likelihood == "bernoulli"
    labelled = dataclasses.replace(data, x_train=x_l, y_train=y_l, y_train_true=y_l)
    # A fully labelled split: an epoch is one pass over the labelled rows, plain Adam at lr.
    settings = FitSettings(epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=1.0,
                           optimizer="adam", binarize=binarize, seed=seed, device=device,
                           progress=False).recommended(model)[0].resolved(model, labelled)  # fmt: skip
    objective = ClassifierObjective(model)
    report = lambda _, __: _evaluate(model, data, keep)  # noqa: E731 - the inner model's report
    callbacks = [Evaluation(report), BestEpoch(), NonFiniteGuard(), RestoreBestWeights()]
    return Trainer(objective, labelled, settings, callbacks).fit()


class ClassifierObjective(nn.Module):
    """The classification path of a model (:func:`classifier_modules`) as a Pyro objective:
    ``-sum log p(y|x)`` over the (labelled) rows of a batch, with an empty guide, so the
    library's training loop trains it like any model (and nothing but
    :func:`classifier_modules` gets a gradient)."""

    def __init__(self, model: SemiSupervisedModel) -> None:
        super().__init__()
        self.inner = model
        self.name = f"{model.name}-labelled-only"
        self.config = model.config  # the sizes the loop's memory check reads

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module(f"{self.name}.classifier", classifier_modules(self.inner))
        with pyro.plate("data", len(x)):
            pyro.factor("log_p_y", classifier_log_prob(self.inner, x, y))

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Nothing is latent: the objective is the log-likelihood of the labels."""

    def make_elbo(self, **options: Any) -> pyro.infer.ELBO:
        return pyro.infer.Trace_ELBO(**options)

    def training_stage(self, epoch: int | None) -> bool:
        """One stage, the classification path alone: no epoch starts a new one (the loop
        asks every model, ``SemiSupervisedModel.training_stage``)."""
        return False


def _evaluate(
    model: SemiSupervisedModel, data: SemiSupervisedData, keep: torch.Tensor
) -> dict[str, float]:
    train_probs = model.classify(data.x_train[keep])
    test_probs = model.classify(data.x_test)
    return {
        "train_accuracy": accuracy(train_probs, data.y_train[keep]),
        "val_accuracy": accuracy(model.classify(data.x_val), data.y_val),
        "test_accuracy": accuracy(test_probs, data.y_test),
        "test_log_loss": log_loss(test_probs, data.y_test),
    }
