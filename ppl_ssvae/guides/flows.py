"""What every flow family shares: the base, the conditioners' widths and the identity start.

A flow guide refines the Gaussian guide (DESIGN.md, "Flows refine the Gaussian"; Rezende
& Mohamed 2015, Kingma et al. 2016, van den Berg et al. 2018): its base is
``N(mu(h), sigma(h))``, the ``gaussian`` family's own head on the shared context ``h``,
and its transforms, conditioned on ``h``, start as the identity (their last layers at
zero, or at the values that make the step the identity). At construction the guide's
density is therefore the Gaussian guide's, and training can only add to it.

``base="standard"`` builds the flows as they were before bases existed: a standard-normal
base and everything the posterior depends on carried by the transforms' conditioners.
Configs written then hold no ``base`` and rebuild with it (``legacy_guide_args``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..nn import DiagonalGaussian, keep_init

#: The base of a flow: the Gaussian guide's head on ``h`` (default), or ``N(0, I)``.
Base = Literal["gaussian", "standard"]
GAUSSIAN, STANDARD = "gaussian", "standard"
#: The families that existed before bases did; their saved configs hold no ``base``.
LEGACY_FAMILIES = frozenset({"maf", "nsf", "realnvp", "pyro-iaf", "pyro-spline"})

# Conditioner width on a Gaussian base: the base already carries mu(h) and sigma(h), so
# the transforms only refine them. 128 is the widest that keeps the affine autoregressive
# flows (maf, pyro-iaf) and two planar or radial steps within 1.5x the Gaussian guide's
# training step on M2 784-500-50 (256: 1.7x); on mnist-5k it gave +0.7 nats of IWAE over
# 64 and the same as 256 (results/README.md, "Flows on the Gaussian").
DEFAULT_WIDTH = 128


def gaussian_base(features: int, out_dim: int) -> DiagonalGaussian:
    """The ``gaussian`` family's head: built first in every flow head, so a flow drawn
    from the same seed as a Gaussian guide has the same trunk and base weights."""
    return DiagonalGaussian(features, out_dim)


def conditioner_widths(
    out_dim: int, hidden_features: Sequence[int] | None, legacy: Sequence[int], base: str
) -> list[int]:
    """The conditioners' hidden widths: as given; else ``legacy`` (the family's widths
    before bases existed) on a standard base, two layers of ``max(DEFAULT_WIDTH, 2 D)``
    on a Gaussian one (masked autoregressive networks need layers as wide as the input)."""
    if hidden_features is not None:
        return list(hidden_features)
    if base == STANDARD:
        return list(legacy)
    return [max(DEFAULT_WIDTH, 2 * out_dim)] * 2


def last_linear(module: nn.Module) -> nn.Module:
    """The output layer of a conditioner network: its last linear layer (torch's, Pyro's
    masked one or zuko's own, which share ``weight`` and ``bias``)."""
    layers = [m for m in module.modules() if _is_linear(m)]
    if not layers:
        raise TypeError(f"{type(module).__name__} has no linear layer to start at zero")
    return layers[-1]


def _is_linear(m: nn.Module) -> bool:
    weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    return isinstance(weight, nn.Parameter) and weight.dim() == 2 and isinstance(bias, nn.Parameter)


@torch.no_grad()
def start_at_identity(module: nn.Module, bias: torch.Tensor | None = None) -> nn.Module:
    """Zero the weights of ``module``'s output layer and set its bias (zeros by default):
    the step's parameters are then the same for every input and context, chosen so that
    the step is the identity. The layer keeps these values under ``init_std``."""
    layer = keep_init(last_linear(module))
    layer.weight.zero_()
    if bias is None:
        layer.bias.zero_()
    else:
        layer.bias.copy_(bias)
    return module
