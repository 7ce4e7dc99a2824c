"""Willetts et al.'s weight prior (App. B): the library's summed loss plus the kernel decay
of ``weight_prior_decay`` steps along the gradient of their batch-mean objective, written
out by hand with the prior as ``log N(W; 0, I)``."""

import pyro
import pytest
import torch
import torch.distributions as td
from pyro import poutine

from ppl_ssvae.training import FitSettings
from ppl_ssvae.training.optim import SingleOptimizer, weight_prior_decay
from tests.models.test_m2 import _hand_written_terms, _m2

pytestmark = pytest.mark.usefixtures("float64")
ALPHA, L2_REG, N_TRAIN = 1.1, 0.5, 40


def _library_loss_and_z(model, x, y):
    """The differentiable ELBO loss and the z it drew, still attached to the guide's graph."""
    seen = {}

    def recording_guide(x, y):
        seen["z"] = poutine.trace(model.guide).get_trace(x, y).nodes["z"]["value"]

    loss = model.make_elbo().differentiable_loss(model.model, recording_guide, x, y)
    return loss, seen["z"]


def _willetts_objective(model, x, y, z):
    """-(mean_l ELBO + mean_u ELBO + alpha mean_l log q(y|x) + l2_reg log N(W; 0, I) / n_train)
    over the kernels (parameters of two or more dimensions), as in their released code."""
    L, log_q = _hand_written_terms(model, x, y, z)
    labelled = y >= 0
    y_l = y[labelled][:, None]
    elbo_l = L[labelled].gather(1, y_l).squeeze(1).mean()
    qy_ll = log_q[labelled].gather(1, y_l).squeeze(1).mean()
    q_u = log_q[~labelled].exp()
    elbo_u = ((q_u * L[~labelled]).sum(-1) - (q_u * log_q[~labelled]).sum(-1)).mean()
    kernels = [p for p in model.parameters() if p.dim() >= 2]
    log_prior = sum(td.Normal(0.0, 1.0).log_prob(w).sum() for w in kernels)
    return -(elbo_l + elbo_u + ALPHA * qy_ll + L2_REG * log_prior / N_TRAIN)


def test_summed_loss_with_kernel_decay_follows_the_willetts_objective_gradient():
    torch.manual_seed(0)
    model = _m2(alpha=ALPHA)
    x = torch.bernoulli(torch.rand(6, 12))
    y = torch.tensor([2, 0, 1, -1, -1, -1])  # a 1:1 batch: 3 labelled, 3 unlabelled rows
    params = [p for p in model.parameters() if p.requires_grad]
    loss, z = _library_loss_and_z(model, x, y)
    library_grads = torch.autograd.grad(loss, params, retain_graph=True)
    # n/2 times their objective: the summed loss's scale, so the two gradients must agree.
    willetts = 3 * _willetts_objective(model, x, y, z)
    expected = torch.autograd.grad(willetts, params)

    decay = weight_prior_decay(L2_REG, rows_per_step=6, train_rows=N_TRAIN)
    assert decay == pytest.approx(L2_REG * 3 / N_TRAIN)
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, library_grads, strict=True):
        p.grad = g.clone()
    SingleOptimizer("sgd", lr=1.0, kernel_decay=decay)(params)  # p <- p - (grad + decay W)
    for p, old, g in zip(params, before, expected, strict=True):
        torch.testing.assert_close(old - p.detach(), g, rtol=1e-7, atol=1e-9)


def test_biases_get_no_decay_and_zero_decay_changes_nothing():
    torch.manual_seed(1)
    pyro.clear_param_store()  # the optimizer orders parameters by their param-store names
    kernel = pyro.param("kernel", torch.randn(3, 2)).unconstrained()
    bias = pyro.param("bias", torch.randn(3)).unconstrained()
    for decay, kernel_step in ((0.25, 1.0 + 0.25), (0.0, 1.0)):
        k0, b0 = kernel.detach().clone(), bias.detach().clone()
        kernel.grad, bias.grad = k0.clone(), b0.clone()  # grad = the parameter itself
        SingleOptimizer("sgd", lr=1.0, kernel_decay=decay)([kernel, bias])
        torch.testing.assert_close(kernel.detach(), k0 - kernel_step * k0)
        torch.testing.assert_close(bias.detach(), torch.zeros(3, dtype=b0.dtype))
        with torch.no_grad():
            kernel.copy_(k0)
            bias.copy_(b0)


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), "0.5"])
def test_bad_weight_prior_is_refused_in_one_line(bad):
    with pytest.raises(Exception, match="weight_prior=.* must be a finite number > 0"):
        FitSettings(weight_prior=bad).validate()
