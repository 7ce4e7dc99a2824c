"""Conditional flows from ``pyro.distributions.transforms``, conditioned on the shared
context ``h``.

``q(z|.) = TransformedDistribution(N(mu(h), sigma(h)), [t_1.condition(h), ...,
t_T.condition(h)])``: the base is the Gaussian guide's head and every transform starts at
the identity (:mod:`ppl_ssvae.guides.flows`); ``base="standard"`` puts ``N(0, I)`` there
instead, built at the context's batch shape (``(K, B)`` under enumeration), so Pyro's
broadcasting sees the enumeration dim. Pyro's autoregressive transforms are
inverse-autoregressive: sampling is one pass, and the draw's inverse is cached by the
transform, so scoring a draw (what the ELBO does) is one pass too. The order of the units
is reversed between autoregressive transforms (and back at the end on the Gaussian base).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn

from ..nn import full_precision
from .flows import GAUSSIAN, STANDARD, Base, conditioner_widths, gaussian_base, start_at_identity


class PyroFlow(nn.Module):
    """``h -> TransformedDistribution(base(h), [t.condition(h) for t in transforms])``.

    Args:
        out_dim: the latent's size.
        transforms: Pyro conditional transform modules.
        base: a module ``h -> distribution`` (the Gaussian head); None: ``N(0, I)``.
        permute: reverse the units between transforms (autoregressive ones).
    """

    def __init__(
        self,
        out_dim: int,
        transforms: Sequence[nn.Module],
        base: nn.Module | None = None,
        permute: bool = True,
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.base = base  # None registers nothing: old state dicts keep their keys
        self.transforms = nn.ModuleList(transforms)
        self.permute = permute
        self.register_buffer("reverse", torch.arange(out_dim - 1, -1, -1), persistent=False)

    def forward(self, h: torch.Tensor) -> dist.TransformedDistribution:
        h = full_precision(h)
        if self.base is None:
            base = dist.Normal(h.new_zeros((*h.shape[:-1], self.out_dim)), 1.0).to_event(1)
        else:
            base = self.base(h)
        steps: list[dist.transforms.Transform] = []
        for i, t in enumerate(self.transforms):
            if i and self.permute:
                steps.append(T.Permute(self.reverse))
            steps.append(t.condition(h))
        # On the Gaussian base the units end in the base's order (an odd number of
        # reversals is undone), so that identity steps give the Gaussian guide itself.
        if self.base is not None and self.permute and len(self.transforms) % 2 == 0:
            steps.append(T.Permute(self.reverse))
        return dist.TransformedDistribution(base, steps)


# The width rule before bases existed: Pyro's masked networks need every hidden layer at
# least as wide as the input.
def _legacy_widths(out_dim: int) -> list[int]:
    return [max(64, 2 * out_dim)] * 2


def refined_flow(
    make: Callable[[list[int]], nn.Module],
    features: int,
    out_dim: int,
    transforms: int,
    hidden_features: Sequence[int] | None,
    base: str,
    identity: Callable[[nn.Module], nn.Module] = start_at_identity,
    permute: bool = True,
) -> PyroFlow:
    """``transforms`` steps ``make(widths)`` on ``base``. On the Gaussian base each step is
    started at the identity by ``identity(step)``; on ``"standard"`` it is as Pyro builds it."""
    widths = conditioner_widths(out_dim, hidden_features, _legacy_widths(out_dim), base)
    if base == STANDARD:
        return PyroFlow(out_dim, [make(widths) for _ in range(transforms)], permute=permute)
    gaussian = gaussian_base(features, out_dim)  # first: the Gaussian guide's init draws
    steps = [identity(make(widths)) for _ in range(transforms)]
    return PyroFlow(out_dim, steps, gaussian, permute)


def iaf(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """Inverse autoregressive flow (Kingma et al. 2016), ``conditional_affine_autoregressive``:
    ``z_i = mu_i(u_<i, h) + sigma_i(u_<i, h) u_i``."""
    return refined_flow(
        lambda hid: T.conditional_affine_autoregressive(out_dim, features, hid),
        features, out_dim, transforms, hidden_features, base,
    )  # fmt: skip


# Pyro's spline pads its end knots with derivative 1 - min_derivative and adds
# min_derivative to the free ones: softplus(b) = 1 - 1e-3 makes every free knot's slope 1.
_MIN_DERIVATIVE = 1e-3
_UNIT_SLOPE = math.log(math.expm1(1.0 - _MIN_DERIVATIVE))


def _spline_identity(bins: int) -> Callable[[nn.Module], nn.Module]:
    """Equal bins and unit knot slopes: the identity, except within the two outer bins,
    where Pyro fixes the end knots' slope at ``1 - 1e-3`` (a log-density change below
    ``1e-3`` per unit there)."""

    def identity(step: nn.Module) -> nn.Module:
        out = step.nn.layers[-1].out_features
        units = out // (4 * bins - 1)  # outputs are (param, unit), params [w, h, d, l]
        bias = torch.zeros(out)
        bias[2 * bins * units : (3 * bins - 1) * units] = _UNIT_SLOPE
        return start_at_identity(step, bias)

    return identity


def spline(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    bins: int = 8,
    bound: float = 3.0,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """Autoregressive linear rational spline flow (Dolatabadi et al. 2020),
    ``conditional_spline_autoregressive`` on [-bound, bound] (identity outside)."""
    return refined_flow(
        lambda hid: T.conditional_spline_autoregressive(
            out_dim, features, hid, count_bins=bins, bound=bound
        ),
        features, out_dim, transforms, hidden_features, base, _spline_identity(bins),
    )  # fmt: skip
