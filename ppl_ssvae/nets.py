"""Network trunks and distribution heads.

Every network the models use is a module whose ``forward`` returns a distribution:
``q_y(x)``, ``q_z(x, y)``, ``p_x(z, y)``. Label-conditioned networks never concatenate
``[x, onehot(y)]``: their first layer is ``W_x x + W_y y`` with ``W_x x`` computed once per
row and ``W_y y`` an embedding lookup that broadcasts over an enumerated label dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}
MIN_SCALE = 1e-4


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], act: str = "relu", final_activation: bool = True) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ``act`` after each (and after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class LabelConditionedTrunk(nn.Module):
    """``h = act(W_x x + W_y y + b)`` then more hidden layers.

    ``x`` has shape ``(..., B, D)``; ``y`` holds class ids of shape broadcastable to
    ``(..., B)`` (e.g. ``(K, 1)`` under parallel enumeration). ``W_x x`` is computed for
    the rows of ``x`` only and the label part is broadcast, so enumerating K labels does
    not repeat the big matrix product.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        if not hidden:
            raise UserError("a label-conditioned network needs at least one hidden layer")
        self.x_layer = nn.Linear(input_dim, hidden[0])
        self.y_layer = nn.Embedding(num_classes, hidden[0])  # == W_y @ onehot(y)
        nn.init.normal_(self.y_layer.weight, std=input_dim**-0.5)
        self.act = activation(act)
        self.rest = mlp(hidden, act)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rest(self.act(self.x_layer(x) + self.y_layer(y)))


class CategoricalHead(nn.Module):
    """``q(y|x) = Cat(softmax(f(x)))`` (Kingma eq. 6 / Willetts eq. 6)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, act: str = "relu"):
        super().__init__()
        self.net = nn.Sequential(
            mlp([input_dim, *hidden], act), nn.Linear(_last(input_dim, hidden), num_classes)
        )

    def forward(self, x: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=self.net(x))


class DiagonalGaussian(nn.Module):
    """A diagonal Gaussian whose loc and scale come from a trunk's features."""

    def __init__(self, features: int, out_dim: int):
        super().__init__()
        self.loc = nn.Linear(features, out_dim)
        self.scale = nn.Linear(features, out_dim)

    def forward(self, h: torch.Tensor) -> dist.Normal:
        return dist.Normal(self.loc(h), F.softplus(self.scale(h)) + MIN_SCALE).to_event(1)


class ConditionalGaussian(nn.Module):
    """``q(z|x, y) = N(mu(x, y), diag sigma^2(x, y))`` (Kingma eq. 7 / Willetts eq. 7)."""

    def __init__(
        self, input_dim: int, num_classes: int, hidden: Sequence[int], z_dim: int, act: str = "relu"
    ):
        super().__init__()
        self.trunk = LabelConditionedTrunk(input_dim, num_classes, hidden, act)
        self.head = DiagonalGaussian(hidden[-1], z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dist.Normal:
        return self.head(self.trunk(x, y))


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli pixels. Accepts intensities in [0, 1] (the usual
    cross-entropy on grey levels) as well as binarised images."""

    support = "unit"

    def __init__(self, features: int, output_dim: int):
        super().__init__()
        self.logits = nn.Linear(features, output_dim)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.logits(h), validate_args=False).to_event(1)


class GaussianLikelihood(nn.Module):
    """Gaussian pixels with a fixed variance ``sigma2`` (the weighting studied by
    Jurasiński sec 3.1) or, with ``sigma2=None``, a learned per-pixel scale."""

    support = "real"

    def __init__(self, features: int, output_dim: int, sigma2: float | None = 1.0):
        super().__init__()
        self.loc = nn.Linear(features, output_dim)
        self.sigma2 = sigma2
        self.scale = nn.Linear(features, output_dim) if sigma2 is None else None

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc = self.loc(h)
        if self.scale is None:
            scale = torch.full_like(loc, self.sigma2**0.5)
        else:
            scale = F.softplus(self.scale(h)) + MIN_SCALE
        return dist.Normal(loc, scale).to_event(1)


LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
}


def likelihood(name: str, features: int, output_dim: int, sigma2: float | None = 1.0) -> nn.Module:
    if name not in LIKELIHOODS:
        raise UserError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    if name == "gaussian":
        return GaussianLikelihood(features, output_dim, sigma2)
    return LIKELIHOODS[name](features, output_dim)


class ConditionalDecoder(nn.Module):
    """``p(x|y, z)``: label-conditioned trunk on ``z`` and a likelihood head (Kingma eq. 4)."""

    def __init__(
        self,
        z_dim: int,
        num_classes: int,
        hidden: Sequence[int],
        output_dim: int,
        likelihood_name: str = "bernoulli",
        sigma2: float | None = 1.0,
        act: str = "relu",
    ):
        super().__init__()
        self.trunk = LabelConditionedTrunk(z_dim, num_classes, hidden, act)
        self.head = likelihood(likelihood_name, hidden[-1], output_dim, sigma2)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.head(self.trunk(z, y))


def _last(input_dim: int, hidden: Sequence[int]) -> int:
    return hidden[-1] if hidden else input_dim
