"""GM-DGM's TraceEnum_ELBO loss against Willetts eq. 28-31 with M2's bound (eq. 2, 3, 8)."""

import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.models import build
from ppl_ssvae.nn import MIN_SCALE
from tests.models.exact import loss_and_sites

K, D, Z = 3, 12, 4
PRIOR = (0.5, 0.3, 0.2)
BATCHES = [[2, -1, 0, -1, -1, 1], [-1] * 6, [0, 1, 2, 2, 1, 0]]


pytestmark = pytest.mark.usefixtures("float64")


def _gmdgm(alpha=2.5, **kw):
    return build("gmdgm", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,), alpha=alpha, **kw)


def _loss_and_z(model, x, y):
    return loss_and_sites(model, x, y, "z")


def _terms(model, x, z, prior, mixture=True):
    """Per-row L(x, k) for every k, and log q(y|x). ``mixture=False`` swaps the learned
    p(z|y) for N(0, I), i.e. M2's prior, to show the test can tell them apart."""
    log_q_y = F.log_softmax(model.q.q_y.net(x), -1)
    bounds = []
    for k in range(K):
        label = torch.full((len(x),), k)
        h = model.q.q_z.trunk(x, label)
        q_z = td.Normal(model.q.q_z.head.loc(h), F.softplus(model.q.q_z.head.scale(h)) + MIN_SCALE)
        # p(z|y): one-hot y times a weight matrix is row k of it (eq. 30, App. B).
        loc, log_var = model.p_z.loc.weight[k], model.p_z.log_var.weight[k]
        p_z = td.Normal(loc, torch.exp(0.5 * log_var)) if mixture else td.Normal(0.0, 1.0)
        logits = model.p_x.head.logits(model.p_x.trunk(z[k]))  # the decoder never sees y
        log_px = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
        log_py = torch.log(torch.tensor(prior[k]))
        bounds.append(log_px + log_py + p_z.log_prob(z[k]).sum(-1) - q_z.log_prob(z[k]).sum(-1))
    return torch.stack(bounds, -1), log_q_y


def _expected_loss(model, x, y, z, alpha, prior, entropy=True, mixture=True):
    L, log_q = _terms(model, x, z, prior, mixture)
    labelled = y >= 0
    y0 = y.clamp(min=0)[:, None]
    labelled_bound = L.gather(1, y0).squeeze(1) + alpha * log_q.gather(1, y0).squeeze(1)
    q = log_q.exp()
    unlabelled_bound = (q * L).sum(-1) - entropy * (q * log_q).sum(-1)
    return -torch.where(labelled, labelled_bound, unlabelled_bound).sum()


@pytest.mark.parametrize("y", BATCHES)
@pytest.mark.parametrize("prior", [None, PRIOR])
def test_loss_equals_hand_written_bound(y, prior):
    torch.manual_seed(0)
    model = _gmdgm(alpha=2.5, prior=prior)
    with torch.no_grad():  # move p(z|y) off its initial unit variances
        model.p_z.log_var.weight.normal_(0.0, 0.5)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(y)
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        assert z.shape == (K, 6, Z)
        expected = _expected_loss(model, x, y, z, 2.5, prior or (1 / K,) * K).item()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_dropping_entropy_alpha_or_the_mixture_prior_would_fail():
    torch.manual_seed(0)
    model = _gmdgm(alpha=2.5)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(BATCHES[0])
    uniform = (1 / K,) * K
    with torch.no_grad():
        loss, z = _loss_and_z(model, x, y)
        variants = {
            "entropy": _expected_loss(model, x, y, z, 2.5, uniform, entropy=False),
            "alpha": _expected_loss(model, x, y, z, 0.0, uniform),
            "p(z|y)": _expected_loss(model, x, y, z, 2.5, uniform, mixture=False),
        }
    for term, value in variants.items():
        assert abs(loss - value.item()) > 1e-2 * abs(loss), term


def test_mixture_prior_is_linear_in_onehot_y_and_decoder_ignores_y():
    torch.manual_seed(0)
    model = _gmdgm()
    weight = model.p_z.loc.weight  # (K, Z): onehot(y) @ weight
    y = torch.tensor([0, 2, 1])
    assert torch.equal(model.p_z(y).base_dist.loc, F.one_hot(y, K).to(weight.dtype) @ weight)
    assert not any("y_layer" in name for name, _ in model.p_x.named_parameters())
    assert sum(p.numel() for p in model.p_z.parameters()) == 2 * K * Z  # no hidden layer
