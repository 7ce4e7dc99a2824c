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

A model whose networks take a leading particle dimension (``model.vectorize_particles``,
as for vectorised training particles) draws its K samples in a plate left of the data
plate: model and guide run once on the items' own rows, so the parts that read only x (the
classifier, the encoder's x-layer) run once per item and only the latents and what follows
them carry the sample dimension. Other models run on each row repeated K times. Either way
one pass holds at most ``max_rows`` (items x samples) rows, and the estimator is the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import time
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from ..errors import UserError, is_finite_number, is_int
from ..guides.sampling import seeded_rng
from ..models.base import SemiSupervisedModel
from ..nn import eval_mode
from ..plates import MAX_PLATE_NESTING
from .kept import KeptProgress

#: Rows (data rows x samples x summed classes) of one model/guide pass; bounds memory.
MAX_ROWS = 16384
#: The plate of the importance samples of a vectorised pass, left of the model's plates.
SAMPLE_PLATE = "iwae_samples"
SAMPLE_DIM = -(MAX_PLATE_NESTING + 1)


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    samples: int | None = None,
) -> torch.Tensor:
    """``log p(x, h) - log q(h | x)``: one draw of h per row of ``x``, shape ``(rows,)``;
    with ``samples=k``, k draws per row in a plate left of the data plate (model and guide
    must take that leading dimension, ``vectorize_particles``), shape ``(k, rows)``."""
    if samples is not None:
        model, guide = _in_sample_plate(model, samples), _in_sample_plate(guide, samples)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    sampled = {name for name, site in guide_trace.nodes.items() if _is_scored(site)}
    rows = x.shape[0]
    shape = (rows,) if samples is None else (samples, rows)
    log_p = sum(
        (_row_log_prob(site, rows, samples) for name, site in model_trace.nodes.items()
         if _is_scored(site) and (site["is_observed"] or name in sampled)),
        x.new_zeros(shape),
    )  # fmt: skip
    log_q = x.new_zeros(shape)
    for name, site in guide_trace.nodes.items():
        if _is_scored(site) and not site["is_observed"]:
            log_q = log_q + _row_log_prob(site, rows, samples, drawn=name)
    return log_p - log_q


def _in_sample_plate(fn: Callable, samples: int) -> Callable:
    def in_plate(*args: torch.Tensor) -> object:
        with pyro.plate(SAMPLE_PLATE, samples, dim=SAMPLE_DIM):
            return fn(*args)

    return in_plate


def _is_scored(site: dict) -> bool:
    infer = site.get("infer") or {}
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)  # a plate's own site (log-density 0)
        and not infer.get("is_auxiliary")
        and not infer.get("_deterministic")
    )


def _row_log_prob(
    site: dict, rows: int, samples: int | None = None, drawn: str | None = None
) -> torch.Tensor:
    """A site's log-density per row, ``(rows,)``, or per sample and row, ``(samples, rows)``
    in a vectorised pass (``drawn``: the name of a guide latent, which must then hold one
    draw per sample)."""
    log_prob = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    if samples is None:
        if log_prob.dim() and log_prob.shape[-1] == rows:
            log_prob = log_prob.reshape(-1, rows).sum(0)  # a site with a leading dim of its own
        return log_prob.expand(rows)
    # Dims -2 and -1 are the sample and data plates; any dim left of them is the site's own.
    if drawn is not None and (log_prob.dim() < 2 or log_prob.shape[-2] != samples):
        raise ValueError(
            f"guide site {drawn!r} has log_prob shape {tuple(log_prob.shape)}, not one draw "
            f"per importance sample ({samples}, ...): its distribution does not broadcast "
            "over a plate left of the data plate; set vectorize_particles = False on the model"
        )
    if log_prob.dim() > 2:
        log_prob = log_prob.reshape(-1, *log_prob.shape[-2:]).sum(0)
    return log_prob.expand(samples, rows)


@torch.no_grad()
def log_likelihood(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
    max_minutes: float | None = None,
    progress: bool = False,
    kept: KeptProgress | None = None,
) -> torch.Tensor:
    """The IWAE estimate per row: ``log p(x)`` where ``y == -1`` (or ``y`` is None),
    ``log p(x, y)`` where ``y`` is a label; in nats.

    Under a Bernoulli likelihood ``x`` must be binary: grey levels are refused, since
    scoring them as probabilities of a binary pixel is not a log-likelihood. Binarise them
    once with :func:`evaluation_inputs`, or use :func:`likelihood_report`, which does.

    Args:
        num_samples: K, the importance samples per row (per class where a label is summed).
        seed: the draws come from this seed; the global RNG is left as it was.
        max_rows: rows of one model/guide pass (data rows x samples x classes), so that
            memory stays bounded for any K.
        max_minutes: the time the estimate may take, judged after its first pass (passes
            x that pass's time): longer raises ``UserError`` instead of running on. None:
            no limit.
        progress: print that estimate and a progress bar of the passes on stderr.
        kept: where the estimate's progress is saved as it goes and read back from, so
            that an interrupted estimate resumes with the same draws and the same result
            (:class:`~ppl_ssvae.evaluation.kept.KeptProgress`). None: nothing is kept.
    """
    # is_int, not isinstance(int): a bool is an int to Python, not a sample count.
    for name, value in (("num_samples", num_samples), ("max_rows", max_rows)):
        if not is_int(value) or value < 1:
            raise UserError(f"{name}={value!r} must be an integer >= 1")
    if max_minutes is not None and not (is_finite_number(max_minutes) and max_minutes > 0):
        raise UserError(f"max_minutes={max_minutes!r} must be a finite number > 0 (or None)")
    if kept is not None and not isinstance(kept, KeptProgress):
        raise UserError(f"kept={kept!r} must be a KeptProgress (or None)")
    x = model.check_x(x)
    if model.config.likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise UserError(
            "x holds grey levels, but a Bernoulli likelihood scores binary pixels: binarise "
            "them once (likelihood.evaluation_inputs) or use likelihood_report, which does"
        )
    clock = PassClock(f"the IWAE estimate (K={num_samples}, {len(x)} rows)", max_minutes, progress)
    y = torch.full((len(x),), -1, dtype=torch.long) if y is None else y
    y = model.check_y(torch.as_tensor(y), len(x))
    if len(x) == 0:
        return x.new_zeros(0)
    try:
        with eval_mode(model), seeded_rng(seed, x.device):
            return _estimate(model, x, y, num_samples, max_rows, clock, kept)
    finally:
        clock.close()


def _estimate(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int,
    max_rows: int,
    clock: PassClock,
    kept: KeptProgress | None,
) -> torch.Tensor:
    # Items: (row, label) pairs to estimate; an unlabelled row of a model that enumerates
    # its label gives one item per class, summed in probability afterwards.
    classes = model.config.num_classes
    expand = model.label_in_joint & (y < 0)
    counts = torch.where(expand, classes, 1)
    item_row = torch.repeat_interleave(torch.arange(len(x), device=x.device), counts)
    first_item = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(item_row), device=x.device) - first_item[item_row]
    item_y = torch.where(expand[item_row], position, y[item_row])
    log_p_items = _items_log_likelihood(
        model, x, item_row, item_y, num_samples, max_rows, clock, kept
    )
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
    clock: PassClock,
    kept: KeptProgress | None = None,
) -> torch.Tensor:
    """``log (1/K) sum_k w_k`` per item, K draws per item, in passes of <= max_rows rows
    (items x samples): one model/guide pass in a sample plate where the model vectorises,
    else on every item's row repeated once per sample. With ``kept``, the items a record
    holds are not estimated again."""
    vectorised = model.vectorize_particles
    items = len(item_row)
    per_pass = max(1, max_rows // num_samples)  # items per pass when all K fit
    samples_per_pass = min(num_samples, max_rows)
    out = [] if kept is None else kept.resume(items, per_pass, x.device)
    first = sum(len(done) for done in out)
    passes_per_item_pass = math.ceil(num_samples / samples_per_pass)
    clock.start(math.ceil((items - first) / per_pass) * passes_per_item_pass)
    for start in range(first, items, per_pass):
        rows, labels = item_row[start : start + per_pass], item_y[start : start + per_pass]
        total = torch.full((len(rows),), -math.inf, device=x.device)
        for done in range(0, num_samples, samples_per_pass):
            k = min(samples_per_pass, num_samples - done)
            if vectorised:
                w = log_weights(model.model, model.guide, x[rows], labels, samples=k)
            else:
                xs, ys = x[rows].repeat(k, 1), labels.repeat(k)
                w = log_weights(model.model, model.guide, xs, ys).reshape(k, len(rows))
            total = torch.logaddexp(total, torch.logsumexp(w, 0))
            release_freed_memory()
            clock.tick()
        out.append(total - math.log(num_samples))
        if kept is not None:
            kept.passed(out, x.device, last=start + per_pass >= items)
    return torch.cat(out)


class PassClock:
    """Times the passes of one estimate: after the first, the whole estimate's time is
    known (passes x that pass's time, measured); over ``max_minutes`` it refuses before
    spending it, else (with ``progress``, for estimates of ``say_after`` seconds or more)
    it says how long it will take and shows a bar."""

    say_after = 10.0

    def __init__(self, what: str, max_minutes: float | None, progress: bool) -> None:
        self.what, self.max_minutes, self.progress = what, max_minutes, progress
        self.passes = self.done = 0
        self.bar: tqdm | None = None

    def start(self, passes: int) -> None:
        self.passes, self.done, self.started = passes, 0, time.perf_counter()

    def tick(self) -> None:
        self.done += 1
        if self.done == 1:
            self._judge(time.perf_counter() - self.started)
        elif self.bar is not None:
            self.bar.update()

    def _judge(self, seconds: float) -> None:
        total = seconds * self.passes
        estimate = (f"{self.passes} passes x {seconds:.3g} s (the first, measured) = about "
                    f"{_duration(total)}")  # fmt: skip
        if self.max_minutes is not None and total > 60 * self.max_minutes:
            raise UserError(
                f"{self.what} would take {estimate}, over its budget of {self.max_minutes:g} "
                "minutes; lower the samples or rows, or raise the budget (--iwae-max-minutes, "
                "max_minutes=)"
            )
        if self.progress and total >= self.say_after:
            print(f"{self.what}: {estimate}", file=sys.stderr)
            self.bar = tqdm(total=self.passes, initial=1, desc="IWAE passes", file=sys.stderr,
                            disable=None, leave=False, dynamic_ncols=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} seconds"


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc's ``malloc_trim``). Thousands of
    passes of the same large shapes fragment glibc's heap: at K = 5000 a GM-DGM on 1000
    test images grew to 22 GB and was killed, though no tensor outlived its pass; trimmed
    after every pass it stays at its first pass's size."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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


def seeded_elbo(model: SemiSupervisedModel, x: torch.Tensor, seed: int = 0) -> float:
    """The mean one-sample ELBO per row of ``x`` (``metrics.mean_elbo``) with its z draws
    from ``seed``: the same checkpoint reports the same number on every call, as the IWAE
    estimate does; the global RNG is left as it was."""
    from .metrics import mean_elbo

    with seeded_rng(seed, model.device):  # the draws happen where the model is
        return mean_elbo(model, x)


def likelihood_report(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    num_samples: int,
    rows: int | None = None,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: bool = False,
) -> dict[str, float | int | bool]:
    """Test ELBO and IWAE log-likelihood per row (nats) and bits per dimension, on ``rows``
    test rows (a fixed, seeded subset; all when None), for ``ppl-ssvae evaluate --iwae``;
    ``max_minutes`` and ``progress`` as for :func:`log_likelihood`."""

    if rows is not None and not (is_int(rows) and rows > 0):
        raise UserError(f"rows={rows!r} must be a positive number of test rows")
    if rows is not None and rows < len(x):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x = x[order[:rows].to(x.device)]
    inputs = evaluation_inputs(model, x, seed)
    log_p = log_likelihood(model, inputs, num_samples=num_samples, seed=seed,
                           max_minutes=max_minutes, progress=progress).mean().item()  # fmt: skip
    return {
        "test_elbo": seeded_elbo(model, inputs, seed),
        "test_log_likelihood": log_p,
        "bits_per_dim": bits_per_dim(log_p, model.config.input_dim),
        "iwae_samples": num_samples,
        "iwae_rows": len(x),
        "binarized": model.config.likelihood == "bernoulli",
    }
