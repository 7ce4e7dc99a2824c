"""The adversarial M2 (Jurasiński App. E): its loss is M2's plus w times the adversary's
cross-entropy on the labelled rows, and its gradients are the game's two moves."""

import pyro
import pytest
import torch
from torch.nn import functional as F

from ppl_ssvae.models import build
from tests.models.exact import loss_and_sites

K, D, Z = 3, 12, 4
W = 0.7

pytestmark = pytest.mark.usefixtures("float64")


def _pair():
    """The adversarial M2 at weight W and the same weights at weight 0 (M2's loss)."""
    torch.manual_seed(0)
    game = build("m2-adversarial", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,),
                 adversary_hidden=(5,), adversary_weight=W, alpha=2.5)  # fmt: skip
    plain = build("m2-adversarial", input_dim=D, num_classes=K, z_dim=Z, hidden=(8,),
                  adversary_hidden=(5,), adversary_weight=0.0, alpha=2.5)  # fmt: skip
    plain.load_state_dict(game.state_dict())
    return game, plain


def _data():
    torch.manual_seed(1)
    return torch.bernoulli(torch.rand(6, D)), torch.tensor([2, -1, 0, -1, 1, 1])


def _cross_entropy(model, z, y):
    """sum over labelled rows n of -log f(y_n | z[y_n, n]): under the enumerated label the
    labelled rows' q(y) is a point mass at y_n, so their z is the draw at index y_n."""
    rows = torch.nonzero(y >= 0).squeeze(1)
    logits = model.adversary.net(z[y[rows], rows])
    return F.cross_entropy(logits, y[rows], reduction="sum")


def _loss(model, x, y, seed=3):
    pyro.set_rng_seed(seed)
    return loss_and_sites(model, x, y, "z")


def test_loss_is_m2_s_plus_w_times_the_adversary_s_cross_entropy():
    game, plain = _pair()
    x, y = _data()
    with torch.no_grad():
        loss, z = _loss(game, x, y)
        m2_loss, z_again = _loss(plain, x, y)
        assert torch.equal(z, z_again) and z.shape == (K, 6, Z)
        expected = m2_loss + W * _cross_entropy(game, z, y).item()
    assert loss == pytest.approx(expected, rel=1e-10)
    assert loss != pytest.approx(m2_loss, rel=1e-6)  # the term is there to be tested


def test_gradients_descend_the_cross_entropy_in_the_adversary_and_ascend_it_in_the_encoder():
    game, plain = _pair()
    x, y = _data()

    def grads(model):
        model.zero_grad()
        pyro.set_rng_seed(3)
        model.make_elbo().differentiable_loss(model.model, model.guide, x, y).backward()
        return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for n, p in model.named_parameters()}  # fmt: skip

    g_game, g_plain = grads(game), grads(plain)
    with torch.no_grad():
        _, z = _loss(game, x, y)
    # By hand: the labelled rows' z as the reparameterised draw of q(z|x, y_n), with the
    # noise the loss used, through the adversary; its cross-entropy's gradients.
    game.zero_grad()
    rows = torch.nonzero(y >= 0).squeeze(1)
    q_z = game.q.q_z(x=x[rows], y=y[rows])
    loc, scale = q_z.base_dist.loc, q_z.base_dist.scale
    eps = ((z[y[rows], rows] - loc) / scale).detach()
    logits = game.adversary.net(loc + scale * eps)
    (W * F.cross_entropy(logits, y[rows], reduction="sum")).backward()
    by_hand = {n: p.grad for n, p in game.named_parameters() if p.grad is not None}
    for name, grad in by_hand.items():
        if name.startswith("adversary."):  # psi: down the cross-entropy
            torch.testing.assert_close(g_game[name], grad)
        else:  # phi, through the reversal: M2's gradient, up the cross-entropy
            torch.testing.assert_close(g_game[name] - g_plain[name], -grad)
    assert any(n.startswith("q.q_z") for n in by_hand) and any(
        n.startswith("adversary.") for n in by_hand
    )
    # The decoder and classifier see no adversary: their gradients are M2's.
    for name in g_game:
        if name.startswith(("p_x.", "q.q_y.")):
            torch.testing.assert_close(g_game[name], g_plain[name])
