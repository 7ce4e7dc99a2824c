"""ADGM's TraceEnum_ELBO loss against Willetts eq. 21-22 (+ eq. 8's alpha term) by hand."""

import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.models import build
from tests.models.exact import loss_and_sites, multi_input_gaussian, multi_input_hidden

K, D, Z, A = 3, 12, 4, 5
PRIOR = (0.5, 0.3, 0.2)
BATCHES = [[2, -1, 0, -1, -1, 1], [-1] * 6, [0, 1, 2, 2, 1, 0]]


pytestmark = pytest.mark.usefixtures("float64")


def _adgm(alpha=2.5, **kw):
    return build(
        "adgm", input_dim=D, num_classes=K, z_dim=Z, a_dim=A, hidden=(8,), alpha=alpha, **kw
    )


def _loss_and_latents(model, x, y):
    return loss_and_sites(model, x, y, "a", "z")


def _terms(model, x, a, z, prior):
    """Per-row L_a(x, k) for every k (eq. 22's bracket at this a), log q(y|a, x), log q(a|x)."""
    q = model.q
    log_q_a = multi_input_gaussian(q.q_a, [x]).log_prob(a).sum(-1)
    log_q_y = F.log_softmax(q.q_y.logits(multi_input_hidden(q.q_y.trunk, [x, a])), -1)
    bounds = []
    for k in range(K):
        label = torch.full((len(x),), k)
        log_q_z = multi_input_gaussian(q.q_z, [x, a], label).log_prob(z[k]).sum(-1)
        logits = model.p_x.head.logits(model.p_x.trunk(z[k], label))
        log_px = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
        log_pz = td.Normal(0.0, 1.0).log_prob(z[k]).sum(-1)
        log_pa = multi_input_gaussian(model.p_a, [x, z[k]], label).log_prob(a).sum(-1)
        log_py = torch.log(torch.tensor(prior[k]))
        bounds.append(log_px + log_py + log_pz + log_pa - log_q_z)
    return torch.stack(bounds, -1), log_q_y, log_q_a


def _expected_loss(model, x, y, a, z, alpha, prior, entropy=True, aux=True):
    L, log_q_y, log_q_a = _terms(model, x, a, z, prior)
    labelled = y >= 0
    y0 = y.clamp(min=0)[:, None]
    labelled_bound = L.gather(1, y0).squeeze(1) + alpha * log_q_y.gather(1, y0).squeeze(1)
    q = log_q_y.exp()
    unlabelled_bound = (q * L).sum(-1) - entropy * (q * log_q_y).sum(-1)
    bound = torch.where(labelled, labelled_bound, unlabelled_bound) - aux * log_q_a
    return -bound.sum()


@pytest.mark.parametrize("y", BATCHES)
@pytest.mark.parametrize("prior", [None, PRIOR])
def test_loss_equals_hand_written_bound(y, prior):
    torch.manual_seed(0)
    model = _adgm(alpha=2.5, prior=prior)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(y)
    with torch.no_grad():
        loss, a, z = _loss_and_latents(model, x, y)
        assert a.shape == (6, A) and z.shape == (K, 6, Z)
        expected = _expected_loss(model, x, y, a, z, 2.5, prior or (1 / K,) * K).item()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_dropping_entropy_alpha_or_auxiliary_terms_would_fail():
    """The equality above has power: each term moves the loss by far more than 1e-4."""
    torch.manual_seed(0)
    model = _adgm(alpha=2.5)
    x = torch.bernoulli(torch.rand(6, D))
    y = torch.tensor(BATCHES[0])
    uniform = (1 / K,) * K
    with torch.no_grad():
        loss, a, z = _loss_and_latents(model, x, y)
        variants = {
            "entropy": _expected_loss(model, x, y, a, z, 2.5, uniform, entropy=False),
            "alpha": _expected_loss(model, x, y, a, z, 0.0, uniform),
            "log q(a|x)": _expected_loss(model, x, y, a, z, 2.5, uniform, aux=False),
        }
    for term, value in variants.items():
        assert abs(loss - value.item()) > 1e-2 * abs(loss), term


def test_classifier_averages_q_y_over_seeded_a_draws():
    """Eq. 33 with N_s draws; the same draws every call, and the global RNG untouched."""
    torch.manual_seed(0)
    model = _adgm(classify_samples=3).eval()
    x = torch.bernoulli(torch.rand(5, D))
    state = torch.get_rng_state()
    probs = model.classify(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model.classify(x), probs)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.q.q_a(x=x).rsample((3,))
        expected = torch.stack([model.q.q_y(x, a_i).probs for a_i in a]).mean(0)
    assert torch.allclose(probs, expected)
