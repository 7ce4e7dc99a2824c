"""Likelihood heads of ppl_ssvae.nn against torch.distributions."""

import pytest
import torch
import torch.distributions as td
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from torch.nn import functional as F

from ppl_ssvae.nn import BernoulliPixels


def test_bernoulli_pixels_log_prob_matches_torch_under_enumeration_broadcast():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 9) * 30  # (K, B, D): large logits exercise softplus's tails
    binary = torch.bernoulli(torch.full((6, 9), 0.4))
    grey = torch.rand(6, 9)
    for x in (binary, grey):
        expected = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        assert torch.allclose(BernoulliPixels(logits).log_prob(x), expected, rtol=1e-5, atol=1e-5)
    exact = td.Independent(td.Bernoulli(logits=logits), 1).log_prob(binary)
    assert torch.allclose(BernoulliPixels(logits).log_prob(binary), exact, rtol=1e-5, atol=1e-5)


def test_bernoulli_pixels_gradient_matches_torch():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((5, 7), 0.5))
    ours = torch.randn(3, 5, 7, requires_grad=True)
    ref = ours.detach().clone().requires_grad_()
    BernoulliPixels(ours).log_prob(x).sum().backward()
    td.Bernoulli(logits=ref).log_prob(x.expand_as(ref)).sum().backward()
    assert torch.allclose(ours.grad, ref.grad, atol=1e-6)


def test_bernoulli_pixels_shapes_mean_sample_expand():
    torch.manual_seed(2)
    d = BernoulliPixels(torch.zeros(5, 7))
    assert d.batch_shape == (5,) and d.event_shape == (7,)
    assert torch.equal(d.mean, torch.full((5, 7), 0.5))
    sample = d.sample((3,))
    assert sample.shape == (3, 5, 7) and set(sample.unique().tolist()) <= {0.0, 1.0}
    wide = d.expand((2, 5))
    assert wide.batch_shape == (2, 5) and wide.log_prob(torch.ones(5, 7)).shape == (2, 5)


def test_bernoulli_pixels_gradient_reaches_the_data_too():
    torch.manual_seed(3)
    logits = torch.randn(3, 5, 7)
    x = torch.rand(5, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    BernoulliPixels(logits).log_prob(x).sum().backward()
    (
        -F.binary_cross_entropy_with_logits(logits, x_ref.expand_as(logits), reduction="none")
    ).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


@pytest.mark.parametrize("tracked", ["logits", "value", "both"])
def test_bernoulli_pixels_under_provenance_tracking_keeps_gradient_and_provenance(tracked):
    """TraceGraph_ELBO wraps values downstream of a sampled discrete latent in Pyro's
    ProvenanceTensor. The log-density must still reach the logits' and the data's
    gradients, carry the provenance, and give the plain-tensor numbers."""
    torch.manual_seed(5)
    logits = (torch.randn(3, 5, 7, dtype=torch.float64) * 30).requires_grad_()  # softplus tails
    x = torch.rand(5, 7, dtype=torch.float64, requires_grad=True)
    plain = BernoulliPixels(logits).log_prob(x)
    plain_grads = torch.autograd.grad(plain.square().sum(), [logits, x])

    wrap = {"logits": {"y"}, "value": {"x"}, "both": {"y", "x"}}[tracked]
    l_in = ProvenanceTensor(logits, frozenset({"y"})) if "y" in wrap else logits
    x_in = ProvenanceTensor(x, frozenset({"x"})) if "x" in wrap else x
    tracked_out = BernoulliPixels(l_in).log_prob(x_in)
    assert get_provenance(tracked_out) == frozenset(wrap)
    out = detach_provenance(tracked_out)
    assert out.requires_grad
    assert torch.equal(out, plain)  # the same bits: the same kernels in the same order
    for got, expected in zip(
        torch.autograd.grad(out.square().sum(), [logits, x]), plain_grads, strict=True
    ):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
