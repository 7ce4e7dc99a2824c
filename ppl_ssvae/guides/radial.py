"""Radial flow (Rezende & Mohamed 2015), Pyro's ``conditional_radial``, on the Gaussian base.

Each step is ``z' = z + beta h(alpha, r) (z - z_0)`` with ``h = 1 / (alpha + r)``,
``r = |z - z_0|`` and ``(z_0, alpha, beta)`` from a dense network of the context ``h``
(``beta > -alpha`` keeps it invertible). Radial steps have no closed-form inverse: the guide
scores its own draws (the ELBO and the IWAE do nothing else), not arbitrary points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import transforms as T
from torch import nn

from .flows import GAUSSIAN, Base, start_at_identity
from .pyro_flows import refined_flow


def _identity(out_dim: int):
    def identity(step: nn.Module) -> nn.Module:
        # alpha' = beta' = 0 gives beta = -softplus(0) + softplus(0) = 0, the identity; the
        # centres z_0 start apart (random), so that the steps do not learn alike. Outputs
        # are [z_0 (D), alpha', beta'].
        return start_at_identity(step, torch.cat([torch.randn(out_dim), torch.zeros(2)]))

    return identity


def radial(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """``transforms`` conditional radial steps; see the module docstring."""
    return refined_flow(
        lambda hid: T.conditional_radial(out_dim, features, hid),
        features, out_dim, transforms, hidden_features, base, _identity(out_dim), permute=False,
    )  # fmt: skip
