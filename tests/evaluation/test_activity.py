"""Pairwise KL between p(z|y) components (Willetts et al. App. C) against the closed form."""

import pyro
import pytest
import torch

from ppl_ssvae import models
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.activity import prior_component_kl


def test_gmdgm_components_kl_is_the_gaussian_closed_form_per_unit():
    pyro.set_rng_seed(0)
    model = models.build("gmdgm", input_dim=6, num_classes=3, z_dim=4, hidden=(8,))
    with torch.no_grad():
        model.p_z.log_var.weight.normal_()  # unequal variances, not the unit ones of init
    kl = prior_component_kl(model, torch.rand(5, 6))
    mu, log_var = model.p_z.loc.weight.detach(), model.p_z.log_var.weight.detach()
    var = log_var.exp()
    for j in range(3):
        for k in range(3):
            hand = 0.5 * (log_var[k] - log_var[j] + (var[j] + (mu[j] - mu[k]) ** 2) / var[k] - 1)
            torch.testing.assert_close(kl[j, k], hand)
    assert torch.all(kl.diagonal(dim1=0, dim2=1) == 0) and kl.shape == (3, 3, 4)


def test_a_prior_without_y_has_identical_components_and_empty_x_is_refused():
    pyro.set_rng_seed(0)
    model = models.build("m2", input_dim=6, num_classes=3, z_dim=2, hidden=(8,))
    assert torch.all(prior_component_kl(model, torch.rand(4, 6)) == 0)
    with pytest.raises(UserError, match="at least one row"):
        prior_component_kl(model, torch.rand(0, 6))
