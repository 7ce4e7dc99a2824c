"""Conditional normalizing flows from zuko, wrapped for Pyro (``pyro.contrib.zuko``).

The flow's context is the shared :class:`~ppl_ssvae.nn.ContextEncoder`'s output ``h``
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

Every family refines the Gaussian guide (:mod:`ppl_ssvae.guides.flows`): its base is the
Gaussian head on ``h`` and its transforms start at the identity; ``base="standard"``
builds the flow as zuko does, from ``N(0, I)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyro.contrib.zuko import ZukoToPyro
from torch import Size, Tensor, nn

from ..nn import full_precision
from .flows import GAUSSIAN, STANDARD, Base, conditioner_widths, gaussian_base, start_at_identity


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

    The flow's base distribution (``N(mu(h), sigma(h))``, or zuko's ``N(0, I)``) is
    expanded to the context's batch shape by ``zuko.lazy.Flow``, so batch shape is
    ``h.shape[:-1]`` (``(K, B)`` under enumeration).
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


def _refined(
    make: Callable[[list[int]], nn.Module],
    features: int,
    out_dim: int,
    hidden_features: Sequence[int] | None,
    base: str,
    invert: bool,
) -> ZukoFlow:
    """``make(widths)``'s transforms on ``base``: as zuko builds the flow (its N(0, I)
    base) for ``"standard"``, else on the Gaussian guide's head and started at the
    identity. Autoregressive transforms (``invert``) are sampled in one pass."""
    from zuko.lazy import Flow, LazyInverse

    widths = conditioner_widths(out_dim, hidden_features, _LEGACY_WIDTHS, base)
    if base == STANDARD:  # the modules (and state-dict keys) of configs saved before bases
        flow = make(widths)
        return ZukoFlow(_inverted(flow) if invert else flow)
    gaussian = gaussian_base(features, out_dim)  # first: the Gaussian guide's init draws
    steps = [start_at_identity(t) for t in make(widths).transform.transforms]
    # zuko.lazy.Flow takes any module ``h -> distribution`` as a conditional base.
    return ZukoFlow(Flow([LazyInverse(t) for t in steps] if invert else steps, gaussian))


# zuko's own default, which the flows used before bases existed.
_LEGACY_WIDTHS = (64, 64)


def maf(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """Masked autoregressive affine flow (Papamakarios et al. 2017), sampled as an IAF
    (Kingma et al. 2016): ``z_i = mu_i(u_<i, h) + exp(s_i(u_<i, h)) u_i`` per transform."""
    import zuko

    def make(widths: list[int]) -> nn.Module:
        return zuko.flows.MAF(
            out_dim, features, transforms=transforms, hidden_features=tuple(widths)
        )

    return _refined(make, features, out_dim, hidden_features, base, invert=True)


def nsf(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    bins: int = 8,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """Neural spline flow (Durkan et al. 2019): monotonic rational-quadratic splines on
    [-5, 5] (identity outside), autoregressive, sampled in one pass."""
    import zuko

    def make(widths: list[int]) -> nn.Module:
        return zuko.flows.NSF(
            out_dim, features, bins=bins, transforms=transforms, hidden_features=tuple(widths)
        )

    return _refined(make, features, out_dim, hidden_features, base, invert=True)


def realnvp(
    features: int,
    out_dim: int,
    transforms: int = 2,
    hidden_features: Sequence[int] | None = None,
    base: Base = GAUSSIAN,
) -> nn.Module:
    """RealNVP affine coupling flow (Dinh et al. 2016), alternating checkered masks."""
    import zuko

    def make(widths: list[int]) -> nn.Module:
        return zuko.flows.RealNVP(
            out_dim, features, transforms=transforms, hidden_features=tuple(widths)
        )

    return _refined(make, features, out_dim, hidden_features, base, invert=False)
