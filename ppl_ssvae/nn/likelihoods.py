"""Likelihood heads p(x|.): Bernoulli pixels with exact float64 gradients, and a Gaussian
with a fixed or learnt variance; by name (``likelihood``) for the conditional decoders and
as flat parameters (``output_params``, ``output_distribution``) for the π-VAE's nets."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F
from torch.overrides import has_torch_function

from ..errors import UserError
from .layers import MIN_SCALE, full_precision, head

# softplus(l) is l itself above this: log1p(exp(-40)) ~ 4e-18 is below float64 rounding, so
# values and gradients are exact in float32 and float64 alike. torch's default, 20, drops up
# to log1p(exp(-20)) ~ 2e-9, which float64 sees, and makes its gradient 1 instead of sigmoid.
_SOFTPLUS_THRESHOLD = 40.0


class _BernoulliLogProb(torch.autograd.Function):
    """``sum_d x_d l_d - softplus(l_d)`` over the last dimension, in few memory passes.

    On CPU the element-wise work on (K, B, D) logits is bound by memory bandwidth, so the
    forward pass updates the softplus buffer in place and the backward pass computes
    ``g * (x - sigmoid(l))`` in one buffer instead of autograd's separate softplus, product
    and accumulation buffers. Tested against torch's Bernoulli (tests/nn/test_likelihoods.py).

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
    (tests/nn/test_likelihoods.py).
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
