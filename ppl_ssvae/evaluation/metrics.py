"""Evaluation metrics for semi-supervised models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from sklearn.metrics import log_loss as sk_log_loss
from torch import nn
from torch.distributions import Distribution

from ..errors import UserError
from ..models.base import SemiSupervisedModel
from ..nn import eval_mode


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose most probable class is the true one."""
    if len(y) == 0:
        return float("nan")
    return (probs.argmax(-1).cpu() == y.cpu()).float().mean().item()


def log_loss(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (scikit-learn's log_loss); NaN on
    no rows, like :func:`accuracy` (scikit-learn refuses empty input)."""
    if len(y) == 0:
        return float("nan")
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
    with eval_mode(model):
        total = 0.0
        for chunk in x.split(batch_size):
            unlabelled = torch.full((len(chunk),), -1, dtype=torch.long)
            total += elbo.loss(model.model, model.guide, chunk, unlabelled)
    return -total / len(x)


def held_out_elbo(model: SemiSupervisedModel, x: torch.Tensor) -> float:
    """:func:`mean_elbo` of held-out rows as the likelihood describes them: under a
    Bernoulli likelihood one fixed binarisation (seed 0, as ``compare`` and
    ``likelihood_report`` score). Training binarises each batch afresh by default, and a
    Bernoulli density of grey levels feeds the encoder images it never trained on."""
    from .likelihood import evaluation_inputs

    return mean_elbo(model, evaluation_inputs(model, x, seed=0))


def elbo_report(model: SemiSupervisedModel, data) -> dict[str, float]:
    """Validation and test ELBO per row, for models that cannot classify (the pi-VAE's
    unsupervised sibling EU); ``fit`` then keeps the epoch with the best validation ELBO."""
    x_val = data.x_val if len(data.x_val) else data.x_test
    return {"elbo": held_out_elbo(model, x_val), "test_elbo": held_out_elbo(model, data.x_test)}


def classification_report(model: SemiSupervisedModel, data) -> dict[str, float]:
    """Validation and test accuracy plus the validation ELBO: the trainer's default evaluation."""
    val_probs = model.classify(data.x_val) if len(data.x_val) else None
    test_probs = model.classify(data.x_test)
    return {
        "elbo": held_out_elbo(model, data.x_val if len(data.x_val) else data.x_test),
        "val_accuracy": accuracy(val_probs, data.y_val) if val_probs is not None else float("nan"),
        "test_accuracy": accuracy(test_probs, data.y_test),
        "test_log_loss": log_loss(test_probs, data.y_test),
    }


class FactorSampler(Protocol):
    """What the betaVAE score needs from a dataset with known discrete factors.

    :class:`ppl_ssvae.data.shapes.FactorImages` (procedural shapes, Small-NORB) implements
    it; the split into "draw factors" and "show an image with these factors" follows
    disentanglement_lib, so rendered and looked-up datasets work alike.
    """

    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, K) integer factor values, each factor drawn from its prior."""
        ...

    def sample_observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, D) float images showing the given factor values, one per row."""
        ...


def _encode(
    encoder: Callable[[torch.Tensor], torch.Tensor | Distribution],
    x: np.ndarray,
    device: torch.device,
    chunk: int,
) -> np.ndarray:
    parts = []
    for start in range(0, len(x), chunk):
        out = encoder(torch.as_tensor(x[start : start + chunk], dtype=torch.float32, device=device))
        # a guide head returns q(z|x); its mean is the representation (Higgins et al.)
        if isinstance(out, Distribution):
            out = out.mean
        parts.append(out.detach().reshape(len(out), -1).double().cpu().numpy())
    return np.concatenate(parts)


def _beta_vae_points(
    encoder: Callable,
    data: FactorSampler,
    num_points: int,
    batch_size: int,
    rngs: tuple[np.random.Generator, np.random.Generator],
    device: torch.device,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray]:
    factor_rng, image_rng = rngs
    num_factors = len(data.factor_sizes)
    labels = factor_rng.integers(0, num_factors, num_points)
    n = num_points * batch_size
    f1 = data.sample_factors(n, factor_rng)
    f2 = data.sample_factors(n, factor_rng)
    rows, shared = np.arange(n), np.repeat(labels, batch_size)
    f2[rows, shared] = f1[rows, shared]
    # pairs interleaved, so that any chunking asks for images in the same order and
    # the score does not depend on ``chunk``
    pairs = np.stack([f1, f2], axis=1).reshape(2 * n, num_factors)
    features = []
    rows_per_chunk = max(1, chunk // (2 * batch_size)) * 2 * batch_size
    for start in range(0, 2 * n, rows_per_chunk):
        x = data.sample_observations(pairs[start : start + rows_per_chunk], image_rng)
        z = _encode(encoder, x, device, chunk)
        z = z.reshape(len(z) // (2 * batch_size), batch_size, 2, -1)
        features.append(np.abs(z[:, :, 0] - z[:, :, 1]).mean(axis=1))
    return np.concatenate(features), labels


def beta_vae_score(
    encoder: Callable[[torch.Tensor], torch.Tensor | Distribution],
    data: FactorSampler,
    *,
    batch_size: int = 64,
    num_train: int = 2048,
    num_test: int = 2048,
    seed: int = 0,
    device: torch.device | str | None = None,
    chunk: int = 4096,
) -> dict[str, float]:
    """The betaVAE disentanglement score (Higgins et al., 2017) of a representation.

    One data point: pick a factor ``k`` uniformly; draw ``batch_size`` pairs of images
    whose factors are independent except that factor ``k`` is shared; the feature is the
    mean over pairs of ``|enc(x1) - enc(x2)|`` and the label is ``k``. A logistic
    regression is fitted on ``num_train`` points and its accuracy on ``num_test`` fresh
    points is the score: 1 when one coordinate block moves with each factor alone,
    ``1 / #factors`` (chance) when the representation ignores the factors. The π-VAE
    paper (Berkhahn et al., sec. 4, Table 12) uses 2 × 64 images per point, 2048 train
    and 2048 test points and a plain logistic regressor on the latent means; those are
    the defaults here.

    Args:
        encoder: images (B, D) float32 -> representation (B, d), or a distribution whose
            mean is used (e.g. the guide's q(z|x) head). ``nn.Module`` encoders are put
            in eval mode while scoring; wrap other callables yourself.
        data: a :class:`FactorSampler`, e.g. ``Shapes()`` or
            ``FactorImages.from_dataset(load_smallnorb(...))``.
        batch_size: pairs averaged per point (L).
        num_train: points to fit the classifier on.
        num_test: points to score the classifier on.
        seed: seeds the numpy Generator that draws factors and images, so the score is
            deterministic for a deterministic encoder.
        device: where the encoder's inputs go; defaults to the module's parameters' device.
        chunk: images per encoder call (memory bound).

    Returns:
        ``{"beta_vae_score": test accuracy, "beta_vae_train_accuracy": train accuracy}``.
    """
    from sklearn.linear_model import LogisticRegression

    num_factors = len(data.factor_sizes)
    if num_factors < 2:
        raise UserError(f"the betaVAE score needs at least 2 factors, the data has {num_factors}")
    for name, value in [
        ("batch_size", batch_size),
        ("num_train", num_train),
        ("num_test", num_test),
        ("chunk", chunk),
    ]:
        if int(value) != value or value < 1:
            raise UserError(f"beta_vae_score: {name} must be a positive integer, got {value!r}")
    module = encoder if isinstance(encoder, nn.Module) else None
    if device is None:
        param = next(module.parameters(), None) if module is not None else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    rngs = tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    with eval_mode(module), torch.no_grad():
        x_train, y_train = _beta_vae_points(
            encoder, data, num_train, batch_size, rngs, device, chunk
        )
        x_test, y_test = _beta_vae_points(encoder, data, num_test, batch_size, rngs, device, chunk)
    if len(np.unique(y_train)) < 2:
        raise UserError(f"num_train={num_train} drew a single factor; use more training points")
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(x_train, y_train)
    return {
        "beta_vae_score": float(classifier.score(x_test, y_test)),
        "beta_vae_train_accuracy": float(classifier.score(x_train, y_train)),
    }
