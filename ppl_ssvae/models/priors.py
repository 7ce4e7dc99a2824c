"""Priors: the standard normal p(z), the class prior p(y), and the class priors for
semi-unsupervised learning (Willetts et al. sec 6.1, eq. 34-35)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from ..errors import UserError
from .config import ModelConfig


def semi_unsupervised_prior(
    num_classes: int, visible_classes: Sequence[int], num_gt_classes: int
) -> tuple[float, ...]:
    """p(y) when some classes are never labelled and extra classes are added.

    ``|y| = num_classes = N_gt + N_aug``. Each of the ``N_gt - N_mask`` classes that have
    labels (``visible_classes``) gets ``1 / N_gt`` (eq. 34): the ground-truth classes are
    taken to be equally frequent. The mass they leave, ``N_mask / N_gt``, is divided
    evenly between the ``N_mask`` masked ground-truth classes and the ``N_aug`` added
    classes (sec 6.1), i.e. each gets ``N_mask / (N_gt (N_aug + N_mask))``.

    Eq. 35 as printed, ``(|y| + N_gt - N_aug - N_mask) / (N_gt (N_aug + N_mask))``, does
    not sum to 1 (it gives 0.15 instead of 0.05 per class in the paper's own setting
    N_gt = 10, N_aug = N_mask = 5); this function follows the text of sec 6.1, which
    eq. 35 is meant to state.

    Args:
        num_classes: ``|y|``, the model's number of classes.
        visible_classes: ids of the classes that have labels in the training data.
        num_gt_classes: ``N_gt``, the number of ground-truth classes (visible + masked).

    Returns:
        The prior as a tuple of floats, ready for a model config's ``prior`` field.

    Example:
        >>> p = semi_unsupervised_prior(15, visible_classes=range(5, 10), num_gt_classes=10)
        >>> p[5], p[0], p[14]
        (0.1, 0.05, 0.05)
    """
    visible = set(visible_classes)
    n_visible = len(visible)
    if not 0 < num_gt_classes <= num_classes:
        raise UserError(
            f"need 0 < num_gt_classes <= num_classes; got {num_gt_classes}, {num_classes}"
        )
    if any(not 0 <= k < num_gt_classes for k in visible):
        raise UserError(f"visible classes must be ground-truth ids in 0..{num_gt_classes - 1}")
    n_mask = num_gt_classes - n_visible
    n_aug = num_classes - num_gt_classes
    if n_mask + n_aug == 0:
        return tuple(1.0 / num_classes for _ in range(num_classes))
    if n_mask == 0:
        raise UserError(
            "every ground-truth class is visible, so eq. 34 leaves no mass for the "
            f"{n_aug} added classes; use a uniform prior or mask a class"
        )
    hidden = n_mask / (num_gt_classes * (n_aug + n_mask))
    return tuple(1.0 / num_gt_classes if k in visible else hidden for k in range(num_classes))


class StandardNormalPrior:
    """Mixin: ``p(z) = N(0, I)`` over ``config.z_dim`` units (M2, ADGM, the latent
    classifiers, the pi-VAE)."""

    config: ModelConfig
    prior: torch.Tensor

    def p_z(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> dist.Distribution:
        return standard_normal(self.config.z_dim, self.prior, batch_shape)


def standard_normal(
    dim: int, like: torch.Tensor, batch_shape: torch.Size | tuple[int, ...] = ()
) -> dist.Distribution:
    """``N(0, I)`` over ``dim`` units, on ``like``'s device and dtype (the usual p(z))."""
    zeros = like.new_zeros(dim)
    return dist.Normal(zeros, 1.0).expand([*batch_shape, dim]).to_event(1)


def class_prior(num_classes: int, prior: tuple[float, ...] | None) -> torch.Tensor:
    """A validated class prior p(y): uniform when ``prior`` is None."""
    if prior is None:
        return torch.full((num_classes,), 1.0 / num_classes)
    # On the CPU, where its values can be read, also while the model is measured on the
    # meta device (ppl_ssvae.memory.meta_build); buffers follow the model's .to(device).
    probs = torch.as_tensor(prior, dtype=torch.get_default_dtype(), device="cpu")
    if probs.shape != (num_classes,) or (probs < 0).any() or abs(probs.sum().item() - 1) > 1e-5:
        raise UserError(f"prior must be {num_classes} non-negative numbers summing to 1")
    return probs
