"""Which z units a model uses (Willetts et al. App. C): the per-unit KL from q(z|x, y) to the
prior, averaged over rows (eq. 36, :func:`unit_activity`), overall and per class
(:func:`kl_activity`). A unit whose KL stays near zero is inactive: the decoder ignores it."""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch.distributions import Independent, Normal, kl_divergence

from ..errors import UserError
from ..guides.registry import CUSTOM, DEFAULT
from ..models.base import SemiSupervisedModel
from ..nn import eval_mode


def _diagonal_normal(fn: Any, rows: int, site: str) -> Normal:
    """The per-unit Normal under a ``z`` site's distribution (unwrapping plates, masks)."""
    base = fn
    while isinstance(base, (Independent, MaskedDistribution, ExpandedDistribution)):
        base = base.base_dist
    if not isinstance(base, Normal):
        raise UserError(
            f"unit_activity needs a diagonal Gaussian at the {site} 'z' site; got "
            f"{type(fn).__name__} (eq. 36 is a per-unit KL, defined for factorised q and p)"
        )
    loc, scale = torch.broadcast_tensors(base.loc, base.scale)
    return Normal(loc.reshape(rows, -1), scale.reshape(rows, -1))


@torch.no_grad()
def unit_activity(
    model: SemiSupervisedModel, x: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    r"""Per-unit KL activity of z, Willetts et al. App. C eq. 36, averaged over ``x``.

    .. math::

        \overline{KL}(D)_i = \frac{1}{|D|} \sum_{x \in D}
            \mathbb{E}_{y \sim q_\phi(y|x)}
            \mathrm{KL}[q_\phi(z_i \mid x, y^*) \,\|\, p_\theta(z_i \mid y)],
        \qquad y^* = \arg\max_y q_\phi(y|x).

    This is the KL definition of eq. 36 (not the variance-of-posterior-mean activity of
    Burda et al.): a unit whose posterior equals its prior scores 0.

    Generic route: ``q(y|x)`` is ``model.classify``; ``q(z|x, y*)`` is the ``"z"`` site
    of ``poutine.trace(model.guide)`` with ``y*`` given as the label (label-latent guides
    then put a point mass on ``y*``; guides without a label latent give ``q(z|x)``); and
    ``p(z|y)`` is the ``"z"`` site of the model traced with every row labelled ``y``,
    replayed on that guide trace (so any latent upstream of z, such as a, matches).
    Both sites must be diagonal Gaussians (``Normal(...).to_event(1)``): a model with another
    guide family (``config.guide``, e.g. a flow) is refused in one line, as is a custom
    module whose z is not one. Costs one model pass per class.

    Args:
        model: any library model whose model and guide have a ``"z"`` site.
        x: ``(N, D)`` inputs, e.g. the test set (the paper's ``D_ts``).
        batch_size: rows per pass.

    Returns:
        A ``(z_dim,)`` tensor of non-negative activities (nats per unit).
    """
    guide = getattr(model.config, "guide", DEFAULT)
    if guide not in (DEFAULT, CUSTOM):
        raise UserError(
            f"unit_activity needs a diagonal Gaussian q(z|.) (eq. 36 is a per-unit KL); "
            f"this model's guide is {guide!r}"
        )
    x = model.check_x(x)
    if len(x) == 0:
        raise UserError("unit_activity needs at least one row of x")
    with eval_mode(model):
        total: torch.Tensor | None = None
        for chunk in x.split(batch_size):
            rows = len(chunk)
            probs = model.classify(chunk)
            y_star = probs.argmax(-1)
            guide_trace = poutine.trace(model.guide).get_trace(chunk, y_star)
            if "z" not in guide_trace.nodes:
                raise UserError(f"model {model.name!r} has no 'z' site in its guide")
            q_z = _diagonal_normal(guide_trace.nodes["z"]["fn"], rows, "guide")
            kl = torch.zeros_like(q_z.loc)
            for k in range(probs.shape[-1]):
                labels = torch.full((rows,), k, dtype=torch.long, device=chunk.device)
                replayed = poutine.replay(model.model, trace=guide_trace)
                model_trace = poutine.trace(replayed).get_trace(chunk, labels)
                p_z = _diagonal_normal(model_trace.nodes["z"]["fn"], rows, "model")
                kl += probs[:, k : k + 1] * kl_divergence(q_z, p_z)
            total = kl.sum(0) if total is None else total + kl.sum(0)
    return (total / len(x)).cpu()


def kl_activity(
    model: SemiSupervisedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> dict[int, torch.Tensor]:
    """Per-unit KL activity of z (Willetts et al. App. C, eq. 36) of the rows of each class.

    ``{class id: (z_dim,) activities}`` by :func:`unit_activity` on
    the rows whose label ``y`` is that class (classes without rows are left out): which
    units a class uses. Needs a diagonal Gaussian ``q(z|.)``, as eq. 36 does.
    """
    y = torch.as_tensor(y)
    return {
        int(c): unit_activity(model, x[y.cpu() == c], batch_size)
        for c in torch.unique(y[y >= 0]).tolist()
    }


@torch.no_grad()
def prior_component_kl(model: SemiSupervisedModel, x: torch.Tensor) -> torch.Tensor:
    r"""Per-unit KL between every ordered pair of the generative components ``p(z|y)``
    (Willetts et al. App. C, the figure after C.5), averaged over the rows of ``x``.

    .. math::

        D_{jk,i} = \frac{1}{|x|} \sum_x \mathrm{KL}[p_\theta(z_i \mid y=j) \,\|\,
            p_\theta(z_i \mid y=k)]

    A unit whose components are the same for every class (KL near 0 for every pair)
    encodes "style"; the class-varying units are the active ones of :func:`unit_activity`.
    ``p(z|y)`` is the model's ``"z"`` site traced with every row labelled ``y`` and
    replayed on the guide's trace for that label (so a latent upstream of z, such as a,
    is the guide's); for GM-DGM it does not depend on x, and a model whose p(z) ignores y
    (M2) scores 0 everywhere. Both sites must be diagonal Gaussians.

    Returns:
        A ``(K, K, z_dim)`` tensor; entry ``[j, k]`` is the KL from component j to k.
    """
    x = model.check_x(x)
    if len(x) == 0:
        raise UserError("prior_component_kl needs at least one row of x")
    with eval_mode(model):
        components = []
        for k in range(model.config.num_classes):
            labels = torch.full((len(x),), k, dtype=torch.long, device=x.device)
            guide_trace = poutine.trace(model.guide).get_trace(x, labels)
            replayed = poutine.replay(model.model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(x, labels)
            components.append(_diagonal_normal(model_trace.nodes["z"]["fn"], len(x), "model"))
    rows = [
        torch.stack([kl_divergence(p_j, p_k).mean(0) for p_k in components]) for p_j in components
    ]
    return torch.stack(rows).cpu()
