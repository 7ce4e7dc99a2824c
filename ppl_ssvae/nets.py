"""Network trunks and distribution heads.

Every network the models use is a module whose ``forward`` returns a distribution:
``q_y(x)``, ``q_z(x=x, y=y)``, ``p_x(z, y)``. Conditional networks share one first layer,
:class:`ContextEncoder`: they never concatenate ``[x, onehot(y)]``; their first layer is
``W_x x + W_y y`` with ``W_x x`` computed once per row and ``W_y y`` an embedding lookup
that broadcasts over an enumerated label dimension. Guide families for the continuous
latents (Gaussians, flows) are heads on that encoder (:mod:`ppl_ssvae.guides.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F
from torch.overrides import has_torch_function

from .errors import UserError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}
MIN_SCALE = 1e-4


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32. Under bf16/fp16 autocast (``fit(precision="bf16")``) the
    layers run in half precision, but log-densities summed over hundreds of pixels and
    enumerated classes would lose their digits, so every distribution is built from
    parameters cast back here. A no-op for float32/float64 tensors."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module ``name``; ``inplace`` where torch offers it (ReLU, ELU), for
    inputs that no other operation keeps for its backward pass."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    module = ACTIVATIONS[name]()
    if inplace and hasattr(module, "inplace"):
        module.inplace = True
    return module


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# What init_normal_ draws small: every kernel, or the output layers only.
INIT_LAYERS = ("all", "heads")


def head(layer: nn.Module) -> nn.Module:
    """Mark ``layer`` as an output layer: one whose outputs are a distribution's parameters
    (logits, loc, scale). ``init_normal_(..., layers="heads")`` draws only these small."""
    layer.is_head = True
    return layer


def keep_init(layer: nn.Module) -> nn.Module:
    """Mark ``layer`` as one whose initial values define its family (a flow's last layer,
    which starts the flow at the identity): ``init_normal_`` leaves it as it is."""
    layer.keep_init = True
    return layer


def check_init_layers(layers: str) -> None:
    """One-line error for an ``init_layers`` value that is not in :data:`INIT_LAYERS`."""
    if layers not in INIT_LAYERS:
        raise UserError(f"unknown init_layers {layers!r}; choose one of {', '.join(INIT_LAYERS)}")


def init_normal_(module: nn.Module, std: float, layers: str = "all") -> None:
    """Willetts et al.'s initialisation (App. B): kernels ~ N(0, std^2), biases 0.

    ``layers="all"`` applies N(0, std^2) to every kernel, as App. B's text reads.
    ``layers="heads"`` applies it to the output layers only (those marked by :func:`head`)
    and draws every other kernel Glorot-normal, as the authors' released code does; with
    std 0.001 on every layer the hidden activations start almost constant and learning is
    slow. Normalisation layers keep their identity initialisation either way, and so do
    layers marked by :func:`keep_init`.
    """
    check_init_layers(layers)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _NORMS) or getattr(m, "keep_init", False):
                continue
            small = layers == "all" or getattr(m, "is_head", False)
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("bias"):
                    p.zero_()
                elif small or p.dim() < 2:
                    p.normal_(0.0, std)
                else:
                    nn.init.xavier_normal_(p)


def mlp(sizes: Sequence[int], act: str = "relu", final_activation: bool = True) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ``act`` after each (and after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


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

    Example:
        >>> enc = ContextEncoder({"x": 6, "y": 3}, (5,))
        >>> enc(x=torch.rand(4, 6), y=torch.arange(3)[:, None]).shape
        torch.Size([3, 4, 5])
    """

    def __init__(self, inputs: Mapping[str, int], hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        if not hidden:
            raise UserError("a conditional network needs at least one hidden layer")
        self.inputs = tuple(inputs)
        self.continuous = tuple(n for n in inputs if n != LABEL)
        if not self.continuous:
            raise UserError("a conditional network needs at least one continuous input")
        # One bias is enough: the blocks are summed before the activation.
        self.layers = nn.ModuleList(
            nn.Linear(inputs[n], hidden[0], bias=i == 0) for i, n in enumerate(self.continuous)
        )
        self.y_layer = nn.Embedding(inputs[LABEL], hidden[0]) if LABEL in inputs else None
        if self.y_layer is not None:
            width = sum(inputs[n] for n in self.continuous)
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
            term = layer(values[name])
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
    """``q(y|x) = Cat(softmax(f(x)))`` (Kingma eq. 6 / Willetts eq. 6)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, act: str = "relu"):
        super().__init__()
        self.net = nn.Sequential(
            mlp([input_dim, *hidden], act), head(nn.Linear(_last(input_dim, hidden), num_classes))
        )

    def forward(self, x: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=full_precision(self.net(x)))


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
        self, inputs: Mapping[str, int], hidden: Sequence[int], out_dim: int, act: str = "relu"
    ):
        trunk = ContextEncoder(inputs, hidden, act)
        super().__init__(trunk, DiagonalGaussian(trunk.features, out_dim))


class ConditionalGaussian(MultiInputGaussian):
    """``q(z|x, y) = N(mu(x, y), diag sigma^2(x, y))`` (Kingma eq. 7 / Willetts eq. 7)."""

    def __init__(
        self, input_dim: int, num_classes: int, hidden: Sequence[int], z_dim: int, act: str = "relu"
    ):
        super().__init__({"x": input_dim, LABEL: num_classes}, hidden, z_dim, act)


# softplus(l) is l itself above this: log1p(exp(-40)) ~ 4e-18 is below float64 rounding, so
# values and gradients are exact in float32 and float64 alike. torch's default, 20, drops up
# to log1p(exp(-20)) ~ 2e-9, which float64 sees, and makes its gradient 1 instead of sigmoid.
_SOFTPLUS_THRESHOLD = 40.0


class _BernoulliLogProb(torch.autograd.Function):
    """``sum_d x_d l_d - softplus(l_d)`` over the last dimension, in few memory passes.

    On CPU the element-wise work on (K, B, D) logits is bound by memory bandwidth, so the
    forward pass updates the softplus buffer in place and the backward pass computes
    ``g * (x - sigmoid(l))`` in one buffer instead of autograd's separate softplus, product
    and accumulation buffers. Tested against torch's Bernoulli (tests/test_nets.py).

    Plain tensors only (see :func:`_bernoulli_log_prob`): ``Function.apply`` bypasses a
    tensor subclass's ``__torch_function__``, so the subclass's own ops inside ``forward``
    wrap their results in new objects and the grad_fn ends up on a wrapper that the
    subclass's next op unwraps past.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, value)
        # softplus(l) - x * l, summed and negated
        softplus = F.softplus(logits, threshold=_SOFTPLUS_THRESHOLD)
        return softplus.addcmul_(value, logits, value=-1).sum(-1).neg_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits, value = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_logits = grad_value = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.sigmoid(logits).sub_(value).mul_(g.neg())
        if ctx.needs_input_grad[1]:
            grad_value = _sum_to(g * logits, value.shape)
        return grad_logits, grad_value


def _bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``sum_d x_d l_d - softplus(l_d)``: the fused Function on plain tensors, plain autograd
    ops on tensor subclasses with ``__torch_function__``.

    TraceGraph_ELBO wraps every value downstream of a non-reparameterised site in Pyro's
    ``ProvenanceTensor``, which unwraps to the tensor it wrapped before each op; the
    Function's output would unwrap to its forward result, which has no grad_fn, and the
    decoder would silently get no gradient. The ops below carry both gradient and
    provenance, give the Function's values bit for bit and its gradients to rounding
    (tests/test_nets.py).
    """
    if has_torch_function((logits, value)):
        # The Function's forward without its in-place steps, so the numbers are the same bits.
        softplus = F.softplus(logits, threshold=_SOFTPLUS_THRESHOLD)
        return torch.addcmul(softplus, value, logits, value=-1).sum(-1).neg()
    return _BernoulliLogProb.apply(logits, value)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to the shape of the input it came from."""
    while t.dim() > len(shape):
        t = t.sum(0)
    dims = [i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1]
    return t.sum(dims, keepdim=True) if dims else t


class BernoulliPixels(dist.TorchDistribution):
    """Independent Bernoulli pixels with logits ``l``, one event over the last dimension.

    ``log p(x) = sum_d x_d l_d - softplus(l_d)``: the numbers of
    ``Bernoulli(logits=l).to_event(1)`` (and, for grey levels x in [0, 1], the usual
    cross-entropy), computed without broadcasting the data to the logits' shape. Under
    label enumeration the logits are (K, B, D) while x is (B, D); torch's
    binary_cross_entropy_with_logits materialises x at (K, B, D) and spent ~14 ms of a
    ~70 ms M2 step on CPU (benchmarks/m2_speed.py), this form about a third of that.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits = full_precision(logits)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> BernoulliPixels:
        new = self._get_checked_instance(BernoulliPixels, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliPixels, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = self.mean
        return p * (1 - p)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._extended_shape(torch.Size(sample_shape))))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _bernoulli_log_prob(self.logits, value)


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli pixels. Accepts intensities in [0, 1] (the usual
    cross-entropy on grey levels) as well as binarised images."""

    support = "unit"

    def __init__(self, features: int, output_dim: int):
        super().__init__()
        self.logits = head(nn.Linear(features, output_dim))

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        # Inputs were range-checked once per batch (SemiSupervisedModel.check_x).
        return BernoulliPixels(self.logits(h), validate_args=False)


class GaussianLikelihood(nn.Module):
    """Gaussian pixels with a fixed variance ``sigma2`` (the weighting studied by
    Jurasiński sec 3.1) or, with ``sigma2=None``, a learned per-pixel scale."""

    support = "real"

    def __init__(self, features: int, output_dim: int, sigma2: float | None = 1.0):
        super().__init__()
        self.loc = head(nn.Linear(features, output_dim))
        self.sigma2 = sigma2
        self.scale = head(nn.Linear(features, output_dim)) if sigma2 is None else None

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc = full_precision(self.loc(h))
        if self.scale is None:
            scale = torch.full_like(loc, self.sigma2**0.5)
        else:
            scale = F.softplus(full_precision(self.scale(h))) + MIN_SCALE
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


# -- networks for the auxiliary and Gaussian-mixture models (ADGM, GM-DGM, AGM-DGM) ----------


class MultiInputCategorical(nn.Module):
    """``Cat(softmax(f(inputs)))`` on a :class:`ContextEncoder`, e.g. q(y|a, x) (Willetts
    eq. 19). Call as ``net(x=x, a=a)``."""

    def __init__(
        self, inputs: Mapping[str, int], hidden: Sequence[int], num_classes: int, act: str = "relu"
    ):
        super().__init__()
        self.trunk = ContextEncoder(inputs, hidden, act)
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
        self.head = likelihood(likelihood_name, _last(z_dim, hidden), output_dim, sigma2)

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return self.head(self.trunk(z))


# -- Unconditional encoders / decoders (Berkhahn et al. 2019, App. A) ------------------
# An encoder trunk maps flattened inputs (B, D) to features (B, F) and exposes
# ``features``; heads on top return distributions. A decoder maps a code (B, C) to the
# distribution of the flattened input. CNN and LSTM nets reshape internally, so every
# model still sees x as (N, D).


def output_params(likelihood_name: str, sigma2: float | None) -> int:
    """How many numbers per output value a decoder emits (logits; loc; loc + scale)."""
    if likelihood_name not in LIKELIHOODS:
        raise UserError(
            f"unknown likelihood {likelihood_name!r}; choose one of {', '.join(LIKELIHOODS)}"
        )
    return 2 if likelihood_name == "gaussian" and sigma2 is None else 1


def output_distribution(
    likelihood_name: str, params: Sequence[torch.Tensor], sigma2: float | None
) -> dist.Distribution:
    """The likelihood over flattened outputs from ``output_params`` tensors of shape (B, D).

    Same conventions as ``BernoulliLikelihood`` / ``GaussianLikelihood``: Bernoulli on
    logits; Gaussian with fixed ``sigma2`` or, for None, a softplus scale (Table 15).
    """
    if likelihood_name == "bernoulli":
        return BernoulliPixels(params[0], validate_args=False)
    loc = full_precision(params[0])
    if sigma2 is None:
        scale = F.softplus(full_precision(params[1])) + MIN_SCALE
    else:
        scale = torch.full_like(loc, sigma2**0.5)
    return dist.Normal(loc, scale).to_event(1)


class DenseEncoder(nn.Module):
    """Stacked dense layers (Table 13: 784-1024-1024, relu)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        self.net = mlp([input_dim, *hidden], act)
        self.features = _last(input_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(conv: nn.Module, channels: int) -> list[nn.Module]:
    # Convolutions feeding batch norm carry no bias: BN removes any per-channel shift,
    # so a bias would get an exactly zero gradient.
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


def _half(size: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class ConvEncoder(nn.Module):
    """Table 14 encoder: three 3x3 convolutions (the last with stride 2), each with batch
    norm and relu, then a dense layer with batch norm, relu and dropout.

    Inputs are flattened images (B, C*H*W) in PyTorch's (C, H, W) order.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: int = 64,
        hidden: int = 512,
        dropout: float = 0.5,
    ):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.convs = nn.Sequential(
            *_conv_bn(nn.Conv2d(c, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.Conv2d(channels, channels, 3, 2, 1, bias=False), channels),
        )
        self.dense = nn.Sequential(
            nn.Linear(channels * _half(h) * _half(w), hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, *self.image_shape)
        return self.dense(self.convs(images).flatten(1))


class ConvDecoder(nn.Module):
    """Table 14 decoder: dense layer to (channels, H/2, W/2) with batch norm, relu and
    dropout, two 3x3 transposed convolutions, one with stride 2 back to (H, W), each with
    batch norm and relu, and a 1x1 transposed convolution emitting the likelihood's
    parameters per pixel. Returns a distribution over flattened (C*H*W) images.
    """

    def __init__(
        self,
        code_dim: int,
        image_shape: Sequence[int],
        channels: int = 64,
        dropout: float = 0.5,
        likelihood_name: str = "bernoulli",
        sigma2: float | None = None,
    ):
        super().__init__()
        c, h, w = image_shape
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        self.grid = (channels, _half(h), _half(w))
        self.dense = nn.Sequential(
            nn.Linear(code_dim, channels * _half(h) * _half(w), bias=False),
            nn.BatchNorm1d(channels * _half(h) * _half(w)),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        # output_padding restores an even size that the stride-2 encoder halved
        pad = (h - (2 * _half(h) - 1), w - (2 * _half(w) - 1))
        self.deconvs = nn.Sequential(
            *_conv_bn(nn.ConvTranspose2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.ConvTranspose2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(
                nn.ConvTranspose2d(channels, channels, 3, 2, 1, output_padding=pad, bias=False),
                channels,
            ),
            head(nn.ConvTranspose2d(channels, c * self.n_params, 1)),
        )

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        grid = self.dense(code).reshape(-1, *self.grid)
        params = self.deconvs(grid).chunk(self.n_params, dim=1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )


class LSTMEncoder(nn.Module):
    """Table 15 encoder: a dense layer along the feature axis (relu), an LSTM, and a dense
    layer (relu) on the LSTM's last output, giving one feature vector per sequence.

    Inputs are flattened sequences (B, T*C) in time-major (T, C) order.
    """

    def __init__(self, seq_len: int, channels: int, widths: Sequence[int] = (40, 40, 30)):
        super().__init__()
        pre, width, post = widths
        self.shape = (seq_len, channels)
        self.pre = nn.Sequential(nn.Linear(channels, pre), nn.ReLU())
        self.lstm = nn.LSTM(pre, width, batch_first=True)
        self.post = nn.Sequential(nn.Linear(width, post), nn.ReLU())
        self.features = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.lstm(self.pre(x.reshape(-1, *self.shape)))
        return self.post(steps[:, -1])


class LSTMDecoder(nn.Module):
    """Table 15 decoder: a dense layer (relu) on the code, repeated over the T steps, an
    LSTM, a dense layer (relu) per step and per-step likelihood parameters (Gaussian
    mean, softplus scale). Returns a distribution over flattened (T*C) sequences.
    """

    def __init__(
        self,
        code_dim: int,
        seq_len: int,
        channels: int,
        widths: Sequence[int] = (40, 40, 30),
        likelihood_name: str = "gaussian",
        sigma2: float | None = None,
    ):
        super().__init__()
        pre, width, post = widths
        self.seq_len = seq_len
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        self.pre = nn.Sequential(nn.Linear(code_dim, post), nn.ReLU())
        self.lstm = nn.LSTM(post, width, batch_first=True)
        self.post = nn.Sequential(nn.Linear(width, pre), nn.ReLU())
        self.out = head(nn.Linear(pre, channels * self.n_params))

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        h = self.pre(code)
        steps, _ = self.lstm(h.unsqueeze(1).expand(-1, self.seq_len, -1))
        params = self.out(self.post(steps)).chunk(self.n_params, dim=-1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )


class PiEncoder(nn.Module):
    """One trunk, two heads forked from its last layer (Berkhahn et al. sec 2.1, Fig. 1a):
    ``q(z|x) = N(mu(x), diag sigma^2(x))`` and the class layer ``pi(x) = softmax(.)``.

    Either head may be absent: the supervised sibling ES has no z head, the unsupervised
    sibling EU no pi head (Table 2). ``factor_classes`` adds one more pi head per further
    label factor (Table 16: category, elevation, azimuth, lighting of Small-NORB).
    ``forward`` runs the trunk once for every head.
    """

    def __init__(
        self,
        trunk: nn.Module,
        z_dim: int | None,
        num_classes: int | None,
        factor_classes: Sequence[int] = (),
    ):
        super().__init__()
        self.trunk = trunk
        self.q_z = DiagonalGaussian(trunk.features, z_dim) if z_dim else None
        self.pi = head(nn.Linear(trunk.features, num_classes)) if num_classes else None
        self.factor_pi = nn.ModuleList(head(nn.Linear(trunk.features, k)) for k in factor_classes)

    def forward(self, x: torch.Tensor) -> tuple[dist.Distribution | None, dist.Categorical | None]:
        """``(q(z|x), pi(x))``; see ``heads`` for the further factor heads too."""
        q_z, q_pi, _ = self.heads(x)
        return q_z, q_pi

    def heads(
        self, x: torch.Tensor
    ) -> tuple[dist.Distribution | None, dist.Categorical | None, list[dist.Categorical]]:
        h = self.trunk(x)
        q_z = self.q_z(h) if self.q_z is not None else None
        q_pi = dist.Categorical(logits=full_precision(self.pi(h))) if self.pi is not None else None
        factors = [dist.Categorical(logits=full_precision(head(h))) for head in self.factor_pi]
        return q_z, q_pi, factors
