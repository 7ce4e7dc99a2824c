"""Conditional normalizing flows from zuko, wrapped for Pyro (``pyro.contrib.zuko``).

The flow's context is the shared :class:`~ppl_ssvae.nets.ContextEncoder`'s output ``h``
(``(K, B, H)`` under label enumeration), so the encoder's first layer is computed once per
row as for the Gaussian guides.

zuko defines a flow in the density direction, ``z = f(x)`` with ``log q(x) =
log N(f(x); 0, I) + log |det df/dx|``, and samples through ``f^{-1}``. For a masked
autoregressive ``f`` (MAF, NSF) that inverse takes D sequential passes, and training
draws z every step. The autoregressive transforms are therefore wrapped in their inverse
(``zuko.lazy.LazyInverse``): sampling is one pass (an inverse autoregressive flow, as in
Kingma et al. 2016), and the log-density of a draw is returned with it
(``rsample_and_log_prob``) and cached by :class:`ZukoDistribution`, which is what the
ELBO scores. Only the log-density of a point the flow did not draw costs D passes.
Coupling flows (RealNVP) take one pass either way and are used as zuko builds them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro.contrib.zuko import ZukoToPyro
from torch import Size, Tensor, nn

from ..nets import full_precision


class ZukoDistribution(ZukoToPyro):
    """:class:`pyro.contrib.zuko.ZukoToPyro` with ``rsample``, so library code and users
    can draw from any guide the same way (``q.rsample((n,))``).

    Draws go through ``rsample_and_log_prob`` and their log-density is cached: scoring a
    draw (what the ELBO does) costs nothing more.
    """

    def rsample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        return self(sample_shape)

    def expand(self, batch_shape: Size, _instance: object = None) -> ZukoDistribution:
        return ZukoDistribution(self.dist.expand(batch_shape))


class ZukoFlow(nn.Module):
    """A zuko conditional flow as a guide head: ``h -> ZukoDistribution(flow(h))``.

    The flow's base distribution is expanded to the context's batch shape by
    ``zuko.lazy.Flow``, so batch shape is ``h.shape[:-1]`` (``(K, B)`` under enumeration).
    """

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, h: Tensor) -> ZukoDistribution:
        return ZukoDistribution(self.flow(full_precision(h)))


def _inverted(flow: nn.Module) -> nn.Module:
    """The same flow with each autoregressive transform replaced by its inverse."""
    from zuko.lazy import Flow, LazyInverse

    return Flow([LazyInverse(t) for t in flow.transform.transforms], flow.base)


def maf(
    features: int, out_dim: int, transforms: int = 3, hidden_features: Sequence[int] = (64, 64)
) -> nn.Module:
    """Masked autoregressive affine flow (Papamakarios et al. 2017), sampled as an IAF:
    ``z_i = mu_i(u_<i, h) + exp(s_i(u_<i, h)) u_i`` per transform."""
    import zuko

    flow = zuko.flows.MAF(
        out_dim, features, transforms=transforms, hidden_features=tuple(hidden_features)
    )
    return ZukoFlow(_inverted(flow))


def nsf(
    features: int,
    out_dim: int,
    transforms: int = 3,
    hidden_features: Sequence[int] = (64, 64),
    bins: int = 8,
) -> nn.Module:
    """Neural spline flow (Durkan et al. 2019): monotonic rational-quadratic splines on
    [-5, 5] (identity outside), autoregressive, sampled in one pass."""
    import zuko

    flow = zuko.flows.NSF(
        out_dim, features, bins=bins, transforms=transforms, hidden_features=tuple(hidden_features)
    )
    return ZukoFlow(_inverted(flow))


def realnvp(
    features: int, out_dim: int, transforms: int = 3, hidden_features: Sequence[int] = (64, 64)
) -> nn.Module:
    """RealNVP affine coupling flow (Dinh et al. 2016), alternating checkered masks."""
    import zuko

    flow = zuko.flows.RealNVP(
        out_dim, features, transforms=transforms, hidden_features=tuple(hidden_features)
    )
    return ZukoFlow(flow)
