"""M1's loss against Kingma & Welling's bound written out with torch.distributions."""

import pytest
import torch
import torch.distributions as td
from pyro import poutine

from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from tests.models.exact import multi_input_gaussian

D, Z = 12, 4
pytestmark = pytest.mark.usefixtures("float64")


def _m1(**kw):
    torch.manual_seed(0)
    return build("m1", input_dim=D, num_classes=3, z_dim=Z, hidden=(8, 6), **kw)


def loss_and_latent(model, x, y, site="z"):
    """The model's differentiable loss and the guide's draw at ``site`` (with its graph)."""
    seen = {}

    def recording_guide(x, y):
        seen[site] = poutine.trace(model.guide).get_trace(x, y).nodes[site]["value"]

    loss = model.make_elbo().differentiable_loss(model.model, recording_guide, x, y)
    return loss, seen[site]


def _decoder_log_prob(model, z, x):
    logits = model.p_x.head.logits(model.p_x.trunk(z))
    return td.Bernoulli(logits=logits).log_prob(x).sum(-1)


@pytest.mark.parametrize("y", [[-1] * 6, [0, 1, 2, -1, 0, 1]])  # labels are ignored
def test_loss_and_gradients_equal_the_hand_written_elbo(y):
    """-sum_n E_q[log p(x_n|z)] + KL(q(z|x_n) || N(0, I)), the KL analytic."""
    model = _m1()
    x, y = torch.bernoulli(torch.rand(6, D)), torch.tensor(y)
    loss, z = loss_and_latent(model, x, y)
    q = multi_input_gaussian(model.q.q_z, [x])
    kl = td.kl_divergence(q, td.Normal(0.0, 1.0)).sum(-1)
    expected = -(_decoder_log_prob(model, z, x) - kl).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    params = list(model.parameters())
    got = torch.autograd.grad(loss, params, retain_graph=True)
    want = torch.autograd.grad(expected, params)
    for (name, _), g, w in zip(model.named_parameters(), got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10), name
    # The bound is tight enough to tell: without its KL term the loss would differ.
    assert abs(loss.item() + _decoder_log_prob(model, z, x).sum().item()) > 1e-3


def test_trace_objective_is_the_monte_carlo_bound():
    model = _m1()
    x, y = torch.bernoulli(torch.rand(6, D)), torch.full((6,), -1)
    seen = {}

    def recording_guide(x, y):
        seen["z"] = poutine.trace(model.guide).get_trace(x, y).nodes["z"]["value"]

    loss = model.make_elbo("trace").differentiable_loss(model.model, recording_guide, x, y)
    z, q = seen["z"], multi_input_gaussian(model.q.q_z, [x])
    log_w = _decoder_log_prob(model, z, x) + td.Normal(0.0, 1.0).log_prob(z).sum(-1)
    expected = -(log_w - q.log_prob(z).sum(-1)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_m1_is_unsupervised():
    model = _m1()
    assert not model.can_classify and not model.generates_by_class
    with pytest.raises(UserError, match="cannot classify; train m1-m2"):
        model.classify(torch.rand(3, D))
    with pytest.raises(UserError, match="no class"):
        model.sample(2, y=1)
    assert model.sample(0).shape == (0, D)
    x = torch.rand(3, D)
    means = model.latent_mean(x)
    assert means.shape == (3, Z) and torch.equal(means, model.encode(x)["z_mean"])
