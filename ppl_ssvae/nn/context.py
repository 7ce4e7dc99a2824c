"""Conditional networks: a shared first layer ``W_x x + W_y y`` (``ContextEncoder``) and the
distribution heads on it, for q(y|x), q(z|x, y) and p(x|y, z) (Kingma et al. 2014, eqs. 1-4),
and for the auxiliary and Gaussian-mixture models (ADGM, GM-DGM, AGM-DGM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .layers import MIN_SCALE, activation, full_precision, head, mlp, output_width
from .likelihoods import likelihood

# The label input of a context encoder: class ids, embedded instead of one-hot encoded.
LABEL = "y"


class ContextEncoder(nn.Module):
    r"""The shared first layers of every conditional network: named inputs to features.

    .. math:: h = \mathrm{act}\Big(\sum_i W_i u_i + W_y\,\mathrm{onehot}(y) + b\Big),
        \quad \text{then more hidden layers}

    the first layer on the concatenation ``[u_1, ..., u_n, onehot(y)]`` written as a sum of
    blocks. Each ``W_i u_i`` runs on ``u_i``'s own batch shape and the sum broadcasts: under
    parallel enumeration ``y`` holds class ids of shape ``(K, 1)`` while ``x`` is ``(B, D)``,
    so ``W_x x`` is computed once per row and the label part (an embedding lookup, which is
    ``W_y onehot(y)``) broadcasts to ``(K, B, H)``. Nothing repeats ``x`` K times.

    Inputs are passed by name (``enc(x=x, a=a, y=y)``) or positionally in declared order
    (``enc(x, a, y)``).

    Args:
        inputs: input name -> size, in call order; the size of ``"y"`` is the number of
            classes (its values are class ids).
        hidden: hidden layer sizes (at least one); the output has ``hidden[-1]`` features.
        act: activation name (:data:`ACTIVATIONS`).
        embed: input name -> a trunk run on that input first (a conv trunk on images,
            :mod:`ppl_ssvae.nn.nets`), exposing ``features``; its block is then
            ``W_i trunk(u_i)``. The trunk runs on the input's own rows, once per row.

    Example:
        >>> enc = ContextEncoder({"x": 6, "y": 3}, (5,))
        >>> enc(x=torch.rand(4, 6), y=torch.arange(3)[:, None]).shape
        torch.Size([3, 4, 5])
    """

    def __init__(
        self,
        inputs: Mapping[str, int],
        hidden: Sequence[int],
        act: str = "relu",
        embed: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        if not hidden:
            raise UserError("a conditional network needs at least one hidden layer")
        self.inputs = tuple(inputs)
        self.continuous = tuple(n for n in inputs if n != LABEL)
        if not self.continuous:
            raise UserError("a conditional network needs at least one continuous input")
        # None, not an empty ModuleDict, keeps dense networks' modules exactly as before.
        self.embed = nn.ModuleDict(embed) if embed else None
        widths = {n: embed[n].features if embed and n in embed else inputs[n] for n in inputs}
        # One bias is enough: the blocks are summed before the activation.
        self.layers = nn.ModuleList(
            nn.Linear(widths[n], hidden[0], bias=i == 0) for i, n in enumerate(self.continuous)
        )
        self.y_layer = nn.Embedding(inputs[LABEL], hidden[0]) if LABEL in inputs else None
        if self.y_layer is not None:
            width = sum(widths[n] for n in self.continuous)
            nn.init.normal_(self.y_layer.weight, std=width**-0.5)
        # The first layer's output is a fresh sum that no backward pass needs.
        self.act = activation(act, inplace=True)
        self.rest = mlp(hidden, act)
        self.features = hidden[-1]
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        values = self.bind(args, named)
        h = None
        for name, layer in zip(self.continuous, self.layers, strict=True):
            u = values[name]
            if self.embed is not None and name in self.embed:
                u = self.embed[name](u)
            term = layer(u)
            h = term if h is None else h + term
        if self.y_layer is not None:
            h = h + self.y_layer(values[LABEL])
        return self.rest(self.act(h))

    def bind(self, args: Sequence[torch.Tensor], named: dict[str, torch.Tensor]) -> dict:
        """Positional inputs in declared order plus named ones, checked against ``inputs``."""
        values = dict(zip(self.inputs, args, strict=False)) if args else named
        if args:
            values.update(named)
        if len(args) > len(self.inputs) or values.keys() != set(self.inputs):
            raise UserError(
                f"this network takes inputs ({', '.join(self.inputs)}); got {len(args)} "
                f"positional and named ({', '.join(named)})"
            )
        return values


def _rename_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """Checkpoints written before ContextEncoder name the first layer of a label-conditioned
    trunk ``x_layer``; it is ``layers.0`` now (same weights, same numbers)."""
    for kind in ("weight", "bias"):
        old = f"{prefix}x_layer.{kind}"
        if old in state_dict:
            state_dict[f"{prefix}layers.0.{kind}"] = state_dict.pop(old)


class LabelConditionedTrunk(ContextEncoder):
    """``h = act(W_x x + W_y y + b)`` then more hidden layers: a :class:`ContextEncoder`
    on ``(x, y)``, called as ``trunk(x, y)``.

    ``x`` has shape ``(..., B, D)``; ``y`` holds class ids of shape broadcastable to
    ``(..., B)`` (e.g. ``(K, 1)`` under parallel enumeration).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden: Sequence[int], act: str = "relu"):
        if not hidden:
            raise UserError("a label-conditioned network needs at least one hidden layer")
        super().__init__({"x": input_dim, LABEL: num_classes}, hidden, act)

    @property
    def x_layer(self) -> nn.Linear:
        """``W_x`` (and the bias): the first layer's block on ``x``, ``layers[0]``."""
        return self.layers[0]


class CategoricalHead(nn.Module):
    """``q(y|x) = Cat(softmax(f(x)))`` (Kingma eq. 6 / Willetts eq. 6); with a ``trunk``
    (a conv trunk exposing ``features``), ``f`` reads ``trunk(x)``."""

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        num_classes: int,
        act: str = "relu",
        trunk: nn.Module | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        width = input_dim if trunk is None else trunk.features
        self.net = nn.Sequential(
            mlp([width, *hidden], act),
            head(nn.Linear(output_width(width, hidden), num_classes)),
        )

    def forward(self, x: torch.Tensor) -> dist.Categorical:
        h = x if self.trunk is None else self.trunk(x)
        return dist.Categorical(logits=full_precision(self.net(h)))


class DiagonalGaussian(nn.Module):
    """A diagonal Gaussian whose loc and scale come from a trunk's features."""

    def __init__(self, features: int, out_dim: int):
        super().__init__()
        self.loc = head(nn.Linear(features, out_dim))
        self.scale = head(nn.Linear(features, out_dim))

    def forward(self, h: torch.Tensor) -> dist.Normal:
        loc, scale = full_precision(self.loc(h)), full_precision(self.scale(h))
        return dist.Normal(loc, F.softplus(scale) + MIN_SCALE).to_event(1)


class Conditional(nn.Module):
    """A conditional distribution ``inputs -> distribution``: a :class:`ContextEncoder`
    ``trunk`` and a ``head`` mapping its features to a distribution.

    The one call convention of every conditional part (q(z|.), q(a|x), p(a|.)):
    ``net(x=x, y=y, ...)`` (or positionally, in ``inputs`` order) returns a distribution
    whose batch shape is the broadcast of the inputs' leading dims.
    """

    def __init__(self, trunk: ContextEncoder, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.trunk.inputs

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> dist.Distribution:
        return self.head(self.trunk(*args, **named))


class MultiInputGaussian(Conditional):
    """``N(mu(inputs), diag sigma^2(inputs))`` on a shared :class:`ContextEncoder`.

    Serves q(z|x, y) (Kingma eq. 7 / Willetts eq. 7), q(a|x) (Willetts eq. 18),
    q(z|a, y, x) (eq. 20), p(a|x, y, z) (eq. 16, Gaussian form) and q(z|x)
    (Jurasiński Prop. 1). Call as ``net(x=x, a=a, y=y)``.
    """

    def __init__(
        self,
        inputs: Mapping[str, int],
        hidden: Sequence[int],
        out_dim: int,
        act: str = "relu",
        embed: Mapping[str, nn.Module] | None = None,
    ):
        trunk = ContextEncoder(inputs, hidden, act, embed)
        super().__init__(trunk, DiagonalGaussian(trunk.features, out_dim))


class ConditionalGaussian(MultiInputGaussian):
    """``q(z|x, y) = N(mu(x, y), diag sigma^2(x, y))`` (Kingma eq. 7 / Willetts eq. 7)."""

    def __init__(
        self, input_dim: int, num_classes: int, hidden: Sequence[int], z_dim: int, act: str = "relu"
    ):
        super().__init__({"x": input_dim, LABEL: num_classes}, hidden, z_dim, act)


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


# -- networks for the auxiliary and Gaussian-mixture models (ADGM, GM-DGM, AGM-DGM) ----------


class MultiInputCategorical(nn.Module):
    """``Cat(softmax(f(inputs)))`` on a :class:`ContextEncoder`, e.g. q(y|a, x) (Willetts
    eq. 19). Call as ``net(x=x, a=a)``."""

    def __init__(
        self,
        inputs: Mapping[str, int],
        hidden: Sequence[int],
        num_classes: int,
        act: str = "relu",
        embed: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.trunk = ContextEncoder(inputs, hidden, act, embed)
        self.logits = head(nn.Linear(self.trunk.features, num_classes))

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=full_precision(self.logits(self.trunk(*args, **named))))


class LabelGaussian(nn.Module):
    """``p(z|y) = N(mu(y), diag sigma^2(y))``: a linear map of onehot(y), no hidden layer.

    Willetts eq. 30 and App. B: one-hot y maps straight to ``mu`` and ``log Sigma``
    (here an embedding lookup, which is that linear map). The means start at N(0, 1)
    draws so the mixture components are distinct from the first step; log-variances
    start at 0 (unit variance).
    """

    def __init__(self, num_classes: int, out_dim: int):
        super().__init__()
        # Only the means are an output layer for init_normal_(layers="heads"): the
        # authors' code draws the log-variance map Glorot-normal.
        self.loc = head(nn.Embedding(num_classes, out_dim))
        self.log_var = nn.Embedding(num_classes, out_dim)
        nn.init.zeros_(self.log_var.weight)

    def forward(self, y: torch.Tensor) -> dist.Normal:
        return dist.Normal(self.loc(y), torch.exp(0.5 * self.log_var(y))).to_event(1)


class Decoder(nn.Module):
    """``p(x|z)``: an MLP on ``z`` and a likelihood head (Willetts eq. 31; no label input)."""

    def __init__(
        self,
        z_dim: int,
        hidden: Sequence[int],
        output_dim: int,
        likelihood_name: str = "bernoulli",
        sigma2: float | None = 1.0,
        act: str = "relu",
    ):
        super().__init__()
        self.trunk = mlp([z_dim, *hidden], act)
        self.head = likelihood(likelihood_name, output_width(z_dim, hidden), output_dim, sigma2)

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return self.head(self.trunk(z))
