"""Planar flow (Rezende & Mohamed 2015), Pyro's ``conditional_planar``, on the Gaussian base.

Each step is ``z' = z + u_hat tanh(w^T z + b)`` with ``(b, u, w)`` from a dense network of
the context ``h``, and ``u_hat`` Pyro's reparameterisation of ``u`` that keeps the step
invertible (``w^T u_hat >= -1``). Planar steps have no closed-form inverse: the guide
scores its own draws (the ELBO and the IWAE do nothing else), not arbitrary points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.distributions import transforms as T
from torch import nn

from .flows import GAUSSIAN, Base, start_at_identity
from .pyro_flows import refined_flow

# u_hat = u + (softplus(w.u) - 1 - w.u) w / |w|^2 is zero where w.u = log(e - 1).
_U_HAT_ZERO = math.log(math.e - 1.0)


def _identity(out_dim: int):
    def identity(step: nn.Module) -> nn.Module:
        # w cannot start at zero (u_hat divides by |w|^2): a random direction, with u such
        # that u_hat = 0; outputs are [b, u (D), w (D)].
        w = torch.randn(out_dim)
        u = _U_HAT_ZERO * w / w.square().sum()
        return start_at_identity(step, torch.cat([torch.zeros(1), u, w]))

    return identity


def planar(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """``transforms`` conditional planar steps; see the module docstring."""
    return refined_flow(
        lambda hid: T.conditional_planar(out_dim, features, hid),
        features, out_dim, transforms, hidden_features, base, _identity(out_dim), permute=False,
    )  # fmt: skip
