"""Guides of the form q(y|x) q(z|x, y) (Kingma et al. 2014 eq. 5-7; Willetts et al. eq. 5-7)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..plates import DATA_PLATE, split_labels

# Logit given to labels other than the observed one: exp(-1e4) underflows to an exact 0,
# and Pyro's Dice drops zero-probability enumerated values from the expectation.
_IMPOSSIBLE = -1e4


def sample_latent_label(
    q_y: dist.Categorical, observed: torch.Tensor, y_filled: torch.Tensor
) -> torch.Tensor:
    """The enumerated ``y_unobserved`` site (inside the data plate): ``q(y|.)`` on
    unlabelled rows, a point mass at the observed label on labelled rows, so the enumerated
    sum reduces to ``L(x, y)`` there. Its ``log q`` counts on unlabelled rows only."""
    point_mass = torch.full_like(q_y.logits, _IMPOSSIBLE).scatter(-1, y_filled[:, None], 0.0)
    logits = torch.where(observed[:, None], point_mass, q_y.logits)
    with poutine.mask(mask=~observed):
        return pyro.sample(
            "y_unobserved", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
        )


def classification_factor(
    q_y: dist.Categorical, observed: torch.Tensor, y_filled: torch.Tensor, weight: float
) -> None:
    """Kingma eq. 9 / Willetts eq. 8: ``+ weight * log q(y|.)`` on labelled rows.

    A guide factor enters the ELBO as ``-log_factor``, hence the sign; ``has_rsample=True``
    keeps Pyro from treating it as a score-function term.
    """
    if weight:
        with poutine.mask(mask=observed):
            pyro.factor("classification", -weight * q_y.log_prob(y_filled), has_rsample=True)


class CategoricalGaussianGuide(nn.Module):
    """``q(y, z|x) = q(y|x) q(z|x, y)`` with parallel enumeration of the latent label.

    The label site is ``y_unobserved``, the latent half of the model's
    ``pyro.sample("y", ..., obs_mask=...)``. On labelled rows the enumerated label gets a
    point mass at the observed label, so the enumerated sum is exactly ``L(x, y)`` there
    and ``sum_y q(y|x) L(x, y) + H(q(y|x))`` (``U(x)``) on unlabelled rows.

    Args:
        q_y: module ``x -> Categorical`` (the classifier).
        q_z: module ``q_z(x=x, y=y) -> distribution over z`` (any guide for z: a family of
            :data:`~ppl_ssvae.guides.registry.GUIDES` or a user's module). ``y`` arrives as
            class ids of shape ``(K, 1)`` under enumeration; the result must have batch
            shape ``(K, B)`` then.
    """

    def __init__(self, q_y: nn.Module, q_z: nn.Module) -> None:
        super().__init__()
        self.q_y = q_y
        self.q_z = q_z

    def forward(self, x: torch.Tensor, y: torch.Tensor, classifier_weight: float = 0.0) -> None:
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            q_y = self.q_y(x)
            y_latent = sample_latent_label(q_y, observed, y_filled)
            pyro.sample("z", self.q_z(x=x, y=y_latent))
            classification_factor(q_y, observed, y_filled, classifier_weight)

    def class_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``q(y|x)``, the classifier (Kingma eq. 6)."""
        return self.q_y(x).probs
