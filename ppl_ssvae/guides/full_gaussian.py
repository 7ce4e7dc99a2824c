"""Gaussian guides with correlated units: full and low-rank-plus-diagonal covariance."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ..nn import MIN_SCALE, full_precision, head


class FullGaussian(nn.Module):
    r"""``q(z|.) = N(mu(h), L(h) L(h)^T)`` with a lower-triangular Cholesky factor

    .. math:: L = \mathrm{diag}(\mathrm{softplus}(d(h)) + \epsilon) + \mathrm{strict\_lower}(o(h))

    ``D (D + 3) / 2`` outputs per row; the density is a ``MultivariateNormal`` with
    ``scale_tril`` (one triangular solve per row and enumerated class). The off-diagonal
    layer starts at zero, i.e. at the diagonal Gaussian.
    """

    def __init__(self, features: int, out_dim: int) -> None:
        super().__init__()
        self.loc = head(nn.Linear(features, out_dim))
        self.scale = head(nn.Linear(features, out_dim))
        self.off_diagonal = head(nn.Linear(features, out_dim * (out_dim - 1) // 2))
        # Start at the diagonal Gaussian: O(1) random off-diagonals make L's inverse grow
        # exponentially with D (a 100-unit factor is then singular in float32).
        nn.init.zeros_(self.off_diagonal.weight)
        nn.init.zeros_(self.off_diagonal.bias)
        rows, cols = torch.tril_indices(out_dim, out_dim, -1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, h: torch.Tensor) -> dist.MultivariateNormal:
        loc = full_precision(self.loc(h))
        diagonal = F.softplus(full_precision(self.scale(h))) + MIN_SCALE
        tril = torch.diag_embed(diagonal)
        tril[..., self.rows, self.cols] = full_precision(self.off_diagonal(h))
        return dist.MultivariateNormal(loc, scale_tril=tril)


class LowRankGaussian(nn.Module):
    r"""``q(z|.) = N(mu(h), W(h) W(h)^T + diag sigma^2(h))``, ``W`` of shape ``(D, rank)``:
    ``D (rank + 2)`` outputs per row, O(D rank^2) per density (Woodbury)."""

    def __init__(self, features: int, out_dim: int, rank: int = 2) -> None:
        super().__init__()
        self.out_dim, self.rank = out_dim, rank
        self.loc = head(nn.Linear(features, out_dim))
        self.scale = head(nn.Linear(features, out_dim))
        self.factor = head(nn.Linear(features, out_dim * rank))

    def forward(self, h: torch.Tensor) -> dist.LowRankMultivariateNormal:
        loc = full_precision(self.loc(h))
        scale = F.softplus(full_precision(self.scale(h))) + MIN_SCALE
        factor = full_precision(self.factor(h)).unflatten(-1, (self.out_dim, self.rank))
        return dist.LowRankMultivariateNormal(loc, factor, scale.square())
