"""Conditional flows from ``pyro.distributions.transforms``, conditioned on the shared
context ``h``.

``q(z|.) = TransformedDistribution(N(0, I), [t_1.condition(h), ..., t_T.condition(h)])``
with the base built at the context's batch shape (``(K, B)`` under enumeration), so
Pyro's broadcasting sees the enumeration dim. Pyro's autoregressive transforms are
inverse-autoregressive: sampling is one pass, and the draw's inverse is cached by the
transform, so scoring a draw (what the ELBO does) is one pass too. The order of the
units is reversed between transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn

from ..nets import full_precision


class PyroFlow(nn.Module):
    """``h -> TransformedDistribution(N(0, I), [t.condition(h) for t in transforms])``."""

    def __init__(self, out_dim: int, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.transforms = nn.ModuleList(transforms)
        self.register_buffer("reverse", torch.arange(out_dim - 1, -1, -1), persistent=False)

    def forward(self, h: torch.Tensor) -> dist.TransformedDistribution:
        h = full_precision(h)
        base = dist.Normal(h.new_zeros((*h.shape[:-1], self.out_dim)), 1.0).to_event(1)
        steps: list[dist.transforms.Transform] = []
        for i, t in enumerate(self.transforms):
            if i:
                steps.append(T.Permute(self.reverse))
            steps.append(t.condition(h))
        return dist.TransformedDistribution(base, steps)


def _hidden(out_dim: int, hidden_features: Sequence[int] | None) -> list[int]:
    # Pyro's masked networks need every hidden layer at least as wide as the input.
    return [max(64, 2 * out_dim)] * 2 if hidden_features is None else list(hidden_features)


def _flow(make: Callable[[list[int]], nn.Module], out_dim: int, transforms: int, hidden):
    return PyroFlow(out_dim, [make(_hidden(out_dim, hidden)) for _ in range(transforms)])


def iaf(
    features: int, out_dim: int, transforms: int = 2, hidden_features: Sequence[int] | None = None
) -> nn.Module:
    """Inverse autoregressive flow (Kingma et al. 2016), ``conditional_affine_autoregressive``:
    ``z_i = mu_i(u_<i, h) + sigma_i(u_<i, h) u_i``."""
    return _flow(
        lambda hid: T.conditional_affine_autoregressive(out_dim, features, hid),
        out_dim,
        transforms,
        hidden_features,
    )


def spline(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    bins: int = 8,
    bound: float = 3.0,
) -> nn.Module:
    """Autoregressive linear rational spline flow (Dolatabadi et al. 2020),
    ``conditional_spline_autoregressive`` on [-bound, bound] (identity outside)."""
    return _flow(
        lambda hid: T.conditional_spline_autoregressive(
            out_dim, features, hid, count_bins=bins, bound=bound
        ),
        out_dim,
        transforms,
        hidden_features,
    )
