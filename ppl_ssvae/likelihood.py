r"""Importance-weighted log-likelihood of any model (the IWAE bound, Burda et al. 2016).

For a row x and K draws from the trained guide,

.. math::

    \log \hat p_K(x) = \log \frac{1}{K} \sum_{k=1}^K
        \frac{p(x, h_k)}{q(h_k \mid x)}, \qquad h_k \sim q(h \mid x),

a lower bound on :math:`\log p(x)` that is at least the ELBO in expectation, grows with K
and reaches :math:`\log p(x)` as :math:`K \to \infty`. Here h is every latent the guide
samples (z; the auxiliary a of ADGM / AGM-DGM, importance-sampled). Where the model's joint
holds the label (``model.label_in_joint``: every model but the pi-VAE), the label of an
unlabelled row is summed exactly instead, :math:`\hat p(x) = \sum_y \hat p_K(x, y)`, each
:math:`\hat p_K(x, y)` from K draws of the guide given y: unbiased for p(x), whether the
guide enumerates y (M2, ADGM, GM-DGM, AGM-DGM) or the model marginalises it (the latent
classifier, whose unlabelled term is a bound, not log p(x)). Labelled rows give
:math:`\log \hat p_K(x, y)`.

The estimate is read off Pyro traces, so it holds for any model/guide pair: a model site
that the guide does not sample is drawn from its prior, which is its own proposal and
cancels; auxiliary factors (classification terms) and ``poutine.scale`` weights are
training devices, not part of p(x), and are left out.

The pi-VAE's decoder reads pi(x), computed from x itself, so its estimate is of
:math:`\log p(x \mid \pi(x))` — a conditional likelihood, reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro import poutine

from .errors import UserError
from .models.base import SemiSupervisedModel

#: Rows (data rows x samples x summed classes) of one model/guide pass; bounds memory.
MAX_ROWS = 16384


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(x, h) - log q(h | x)`` per row, one draw of h per row (the rows of ``x``)."""
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    sampled = {name for name, site in guide_trace.nodes.items() if _is_scored(site)}
    rows = x.shape[0]
    log_p = sum(
        (_row_log_prob(site, rows) for name, site in model_trace.nodes.items()
         if _is_scored(site) and (site["is_observed"] or name in sampled)),
        x.new_zeros(rows),
    )  # fmt: skip
    log_q = sum(
        (_row_log_prob(site, rows) for site in guide_trace.nodes.values()
         if _is_scored(site) and not site["is_observed"]),
        x.new_zeros(rows),
    )  # fmt: skip
    return log_p - log_q


def _is_scored(site: dict) -> bool:
    infer = site.get("infer") or {}
    return (
        site["type"] == "sample"
        and not infer.get("is_auxiliary")
        and not infer.get("_deterministic")
    )


def _row_log_prob(site: dict, rows: int) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    if log_prob.dim() and log_prob.shape[-1] == rows:
        log_prob = log_prob.reshape(-1, rows).sum(0)  # a site with a leading dim of its own
    return log_prob.expand(rows)


@torch.no_grad()
def log_likelihood(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> torch.Tensor:
    """The IWAE estimate per row: ``log p(x)`` where ``y == -1`` (or ``y`` is None),
    ``log p(x, y)`` where ``y`` is a label; in nats.

    Args:
        num_samples: K, the importance samples per row (per class where a label is summed).
        seed: the draws come from this seed; the global RNG is left as it was.
        max_rows: rows of one model/guide pass (data rows x samples x classes), so that
            memory stays bounded for any K.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"num_samples={num_samples!r} must be an integer >= 1")
    x = model.check_x(x)
    y = torch.full((len(x),), -1, dtype=torch.long) if y is None else y
    y = model.check_y(torch.as_tensor(y), len(x))
    if len(x) == 0:
        return x.new_zeros(0)
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return _estimate(model, x, y, num_samples, model.label_in_joint, max_rows)
    finally:
        model.train(was_training)


def _estimate(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int,
    summed: bool,
    max_rows: int,
) -> torch.Tensor:
    # Items: (row, label) pairs to estimate; an unlabelled row of a model that enumerates
    # its label gives one item per class, summed in probability afterwards.
    classes = model.config.num_classes
    expand = summed & (y < 0)
    counts = torch.where(expand, classes, 1)
    item_row = torch.repeat_interleave(torch.arange(len(x), device=x.device), counts)
    first_item = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(item_row), device=x.device) - first_item[item_row]
    item_y = torch.where(expand[item_row], position, y[item_row])
    log_p_items = _items_log_likelihood(model, x, item_row, item_y, num_samples, max_rows)
    return _segment_logsumexp(log_p_items, item_row, len(x))


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """``logsumexp`` of ``values`` within each of ``n`` segments (ids in ``segment``)."""
    peak = values.new_full((n,), -math.inf).scatter_reduce(0, segment, values, "amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = values.new_zeros(n).scatter_add(0, segment, (values - peak[segment]).exp())
    return peak + total.log()


def _items_log_likelihood(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    item_row: torch.Tensor,
    item_y: torch.Tensor,
    num_samples: int,
    max_rows: int,
) -> torch.Tensor:
    """``log (1/K) sum_k w_k`` per item, K draws per item, in passes of <= max_rows rows."""
    items = len(item_row)
    per_pass = max(1, max_rows // num_samples)  # items per pass when all K fit
    samples_per_pass = min(num_samples, max_rows)
    out = []
    for start in range(0, items, per_pass):
        rows, labels = item_row[start : start + per_pass], item_y[start : start + per_pass]
        total = torch.full((len(rows),), -math.inf, device=x.device)
        for done in range(0, num_samples, samples_per_pass):
            k = min(samples_per_pass, num_samples - done)
            xs = x[rows].repeat(k, 1)
            ys = labels.repeat(k)
            w = log_weights(model.model, model.guide, xs, ys).reshape(k, len(rows))
            total = torch.logaddexp(total, torch.logsumexp(w, 0))
        out.append(total - math.log(num_samples))
    return torch.cat(out)


def bits_per_dim(nats_per_row: float, input_dim: int) -> float:
    """``-log p(x)`` in bits per input dimension, from the mean log-likelihood in nats."""
    return -nats_per_row / (input_dim * math.log(2))


def evaluation_inputs(model: SemiSupervisedModel, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The inputs a likelihood is reported on: for a Bernoulli likelihood, one fixed
    binarisation of the grey levels (seeded; training binarises afresh every batch, and a
    Bernoulli log-density of grey levels is not a log-likelihood), else ``x`` as given."""
    if model.config.likelihood != "bernoulli":
        return x
    return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))


def likelihood_report(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    num_samples: int,
    rows: int | None = None,
    seed: int = 0,
) -> dict[str, float | int | bool]:
    """Test ELBO and IWAE log-likelihood per row (nats) and bits per dimension, on ``rows``
    test rows (a fixed, seeded subset; all when None), for ``ppl-ssvae evaluate --iwae``."""
    from .metrics import mean_elbo

    if rows is not None and not (isinstance(rows, int) and rows > 0):
        raise UserError(f"rows={rows!r} must be a positive number of test rows")
    if rows is not None and rows < len(x):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x = x[order[:rows].to(x.device)]
    inputs = evaluation_inputs(model, x, seed)
    log_p = log_likelihood(model, inputs, num_samples=num_samples, seed=seed).mean().item()
    return {
        "test_elbo": mean_elbo(model, inputs),
        "test_log_likelihood": log_p,
        "bits_per_dim": bits_per_dim(log_p, model.config.input_dim),
        "iwae_samples": num_samples,
        "iwae_rows": len(x),
        "binarized": model.config.likelihood == "bernoulli",
    }
