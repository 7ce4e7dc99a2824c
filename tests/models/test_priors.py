"""The semi-unsupervised class prior (Willetts et al. sec 6.1, eq. 34-35)."""

import math

import pyro
import pytest
import torch

from ppl_ssvae.errors import UserError
from ppl_ssvae.models import MODELS, build, semi_unsupervised_prior


@pytest.mark.parametrize(
    ("num_classes", "visible", "n_gt"),
    [(15, range(5, 10), 10), (30, range(5, 10), 10), (10, range(10), 10), (7, [0, 2], 4)],
)
def test_sums_to_one(num_classes, visible, n_gt):
    prior = semi_unsupervised_prior(num_classes, visible, n_gt)
    assert len(prior) == num_classes and all(p > 0 for p in prior)
    assert math.isclose(sum(prior), 1.0)


def test_paper_setting_by_hand():
    """Fashion-MNIST in sec 6.1: N_gt = 10, classes 5-9 labelled, N_mask = 5, N_aug = 5.

    Eq. 34: each visible class gets 1/N_gt = 0.1, together 0.5. The other 0.5 is shared
    by the 5 masked and 5 added classes: 0.05 each. With N_aug = 20: 0.5 / 25 = 0.02.
    """
    assert semi_unsupervised_prior(15, range(5, 10), 10) == pytest.approx(
        (0.05,) * 5 + (0.1,) * 5 + (0.05,) * 5
    )
    assert semi_unsupervised_prior(30, range(5, 10), 10) == pytest.approx(
        (0.02,) * 5 + (0.1,) * 5 + (0.02,) * 20
    )


def test_visible_classes_need_not_be_contiguous():
    # N_gt = 4, visible {0, 2}: 0.25 each; N_mask = 2, N_aug = 3 share 0.5: 0.1 each.
    assert semi_unsupervised_prior(7, [0, 2], 4) == pytest.approx(
        (0.25, 0.1, 0.25, 0.1, 0.1, 0.1, 0.1)
    )


def test_eq35_as_printed_does_not_sum_to_one():
    """Why the function follows sec 6.1's text rather than eq. 35's printed numerator."""
    size, n_gt, n_aug, n_mask = 15, 10, 5, 5
    printed = (size + n_gt - n_aug - n_mask) / (n_gt * (n_aug + n_mask))
    assert 5 * (1 / n_gt) + 10 * printed == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("num_classes", "visible", "n_gt"),
    [(15, [10], 10), (15, [-1], 10), (5, [0], 10), (12, range(10), 10)],
)
def test_bad_arguments_are_user_errors(num_classes, visible, n_gt):
    with pytest.raises(UserError):
        semi_unsupervised_prior(num_classes, visible, n_gt)


@pytest.mark.parametrize("name", sorted(set(MODELS) & {"m2", "adgm", "gmdgm", "agmdgm", "latent"}))
def test_models_take_the_prior_and_extra_classes(name):
    """|y| = K + N_aug > the data's K: labels only use ids < K, and one SVI step runs."""
    prior = semi_unsupervised_prior(6, visible_classes=[1, 2], num_gt_classes=3)
    pyro.set_rng_seed(0)
    model = build(name, input_dim=8, num_classes=6, z_dim=3, hidden=(8,), prior=prior)
    assert torch.allclose(model.prior, torch.tensor(prior, dtype=model.prior.dtype))
    x = torch.bernoulli(torch.full((5, 8), 0.4))
    y = torch.tensor([1, -1, 2, -1, -1])
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), model.make_elbo())
    assert math.isfinite(svi.step(x, y))
    assert model.classify(x).shape == (5, 6)
