"""Guides with an auxiliary latent: q(a, y, z|x) = q(z|a, y, x) q(y|a, x) q(a|x).

Willetts et al. eq. 17-20 (the ADGM of Maaløe et al. 2016), used by ADGM and AGM-DGM.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ..plates import DATA_PLATE, split_labels
from .categorical_gaussian import classification_factor, sample_latent_label
from .sampling import seeded_sample

__all__ = ["AuxiliaryGuide", "seeded_sample"]


class AuxiliaryGuide(nn.Module):
    """``q(a, y, z|x) = q(z|a, y, x) q(y|a, x) q(a|x)`` with parallel enumeration of y.

    ``a`` is drawn once per row (reparameterised); the label site ``y_unobserved`` (the
    latent half of the model's ``obs_mask`` site) is enumerated given that ``a``. On
    labelled rows it gets a point mass at the observed label, as in
    :class:`~ppl_ssvae.guides.CategoricalGaussianGuide`, so the enumerated sum is exactly
    ``L(x, y)`` (Willetts eq. 22) there and ``L(x)`` (eq. 21) on unlabelled rows.

    Args:
        q_a: module ``q_a(x=x) -> distribution over a`` (eq. 18).
        q_y: module ``q_y(x=x, a=a) -> Categorical`` (eq. 19).
        q_z: module ``q_z(x=x, a=a, y=y) -> distribution over z`` (eq. 20); ``y`` arrives
            as class ids of shape ``(K, 1)`` under enumeration.
    """

    def __init__(self, q_a: nn.Module, q_y: nn.Module, q_z: nn.Module) -> None:
        super().__init__()
        self.q_a = q_a
        self.q_y = q_y
        self.q_z = q_z

    def forward(self, x: torch.Tensor, y: torch.Tensor, classifier_weight: float = 0.0) -> None:
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            a = pyro.sample("a", self.q_a(x=x))
            q_y = self.q_y(x=x, a=a)
            y_latent = sample_latent_label(q_y, observed, y_filled)
            pyro.sample("z", self.q_z(x=x, a=a, y=y_latent))
            # Willetts eq. 8 with q(y|x) replaced by q(y|a, x) at the a drawn above: a
            # one-sample estimate of eq. 23, as in the rest of the objective.
            classification_factor(q_y, observed, y_filled, classifier_weight)

    @torch.no_grad()
    def class_probs(self, x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
        """Willetts eq. 23/33: ``(1/N_s) sum_i q(y|a_i, x)`` with ``a_i ~ q(a|x)``.

        The ``N_s`` draws use a fixed seed (the global RNG is left untouched), so the
        classifier is a deterministic function of ``x``: repeated calls and a reloaded
        model give identical predictions.
        """
        a = seeded_sample(self.q_a(x=x), num_samples, x.device, seed)
        return self.q_y(x=x, a=a).probs.mean(0)
