"""The diagonal Gaussian guide: ``q(z|.) = N(mu(h), diag sigma^2(h))`` (Kingma eq. 7)."""

from __future__ import annotations

from torch import nn

from ..nn import DiagonalGaussian


def diagonal_gaussian(features: int, out_dim: int) -> nn.Module:
    """``N(mu, diag sigma^2)`` with ``sigma = softplus(.) + MIN_SCALE``: the library default,
    and the only family with an analytic per-unit KL (``clustering.unit_activity``)."""
    return DiagonalGaussian(features, out_dim)
