"""The IWAE log-likelihood: exact on a linear-Gaussian model, >= the ELBO, non-decreasing
in K, labels summed exactly, memory bounded, and `ppl-ssvae evaluate --iwae --json`."""

from __future__ import annotations

import dataclasses
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_ssvae import likelihood
from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.likelihood import bits_per_dim, log_likelihood
from ppl_ssvae.metrics import mean_elbo
from ppl_ssvae.models import build
from ppl_ssvae.models.base import ModelConfig, SemiSupervisedModel
from ppl_ssvae.plates import DATA_PLATE
from ppl_ssvae.train import fit


@dataclasses.dataclass
class PPCAConfig(ModelConfig):
    likelihood: str = "gaussian"


class PPCA(SemiSupervisedModel):
    """x = W z + mu + eps, z ~ N(0, I_2), eps ~ N(0, s^2 I): log p(x) is N(mu, W W^T + s^2 I).
    The guide is the exact posterior's mean with a 1.25x too wide scale, so the importance
    weights vary and K matters."""

    name = "ppca-test"
    config_class = PPCAConfig
    label_in_joint = False

    def __init__(self, config: PPCAConfig) -> None:
        super().__init__(config)
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(config.input_dim, 2, generator=g))
        self.mu = nn.Parameter(torch.randn(config.input_dim, generator=g))
        self.s = 0.5

    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.w @ self.w.T + self.s**2 * torch.eye(self.config.input_dim)
        return torch.distributions.MultivariateNormal(self.mu, cov)

    def model(self, x, y):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.mu, self.s).to_event(1), obs=x)

    def guide(self, x, y):
        precision = torch.eye(2) + self.w.T @ self.w / self.s**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.mu) @ self.w @ cov.T / self.s**2
        scale = 1.25 * torch.linalg.cholesky(cov)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=scale))

    def _class_probs(self, x):
        raise NotImplementedError

    def sample(self, n, y=None, mean=False):
        raise NotImplementedError


@pytest.fixture
def ppca():
    return PPCA(PPCAConfig(input_dim=4, num_classes=1))


def test_matches_the_closed_form_on_probabilistic_pca(ppca):
    x = ppca.marginal().sample((20,))
    exact = ppca.marginal().log_prob(x)
    estimate = log_likelihood(ppca, x, num_samples=4000, seed=0)
    assert torch.allclose(estimate, exact, atol=0.03), (estimate - exact).abs().max()
    # K = 1 is the ELBO's estimate: below log p(x) by KL(q || posterior) = d/2 (s^2 - 1 -
    # log s^2) = 0.116 nats for a 1.25x too wide scale in d = 2.
    one = log_likelihood(ppca, torch.cat([x] * 50), num_samples=1, seed=0)
    assert (torch.cat([exact] * 50) - one).mean().item() == pytest.approx(0.116, abs=0.03)


def test_memory_stays_bounded_and_the_estimate_does_not_depend_on_the_pass_size(ppca, monkeypatch):
    x = ppca.marginal().sample((6,))
    seen = []
    weights = likelihood.log_weights

    def spy(model, guide, xs, ys):
        seen.append(len(xs))
        return weights(model, guide, xs, ys)

    monkeypatch.setattr(likelihood, "log_weights", spy)
    small = log_likelihood(ppca, x, num_samples=5000, max_rows=700)
    assert max(seen) <= 700
    large = log_likelihood(ppca, x, num_samples=5000, max_rows=40000)
    assert torch.allclose(small, large, atol=0.03)  # different draws, same quantity


@pytest.fixture(scope="module")
def trained():
    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    models = {}
    for name in ("m2", "adgm", "latent"):
        pyro.set_rng_seed(0)
        model = build(name, input_dim=64, num_classes=10, z_dim=4, hidden=(32,))
        fit(model, data, epochs=2, progress=False)
        models[name] = model
    x = torch.bernoulli(data.x_test[:40], generator=torch.Generator().manual_seed(0))
    return models, x, data.y_test[:40]


@pytest.mark.parametrize("name", ["m2", "adgm", "latent"])
def test_at_least_the_elbo_and_non_decreasing_in_k(trained, name):
    models, x, _ = trained
    model = models[name]
    x = torch.cat([x] * 5)  # 200 rows: the means below have MC sd ~0.03
    elbo = mean_elbo(model, x)
    estimates = [
        log_likelihood(model, x, num_samples=k, seed=0).mean().item() for k in (1, 10, 100)
    ]
    assert estimates[0] >= elbo - 0.1  # K = 1 with the label summed exactly, >= ELBO in expectation
    assert estimates[1] >= estimates[0] - 0.1 and estimates[2] >= estimates[1] - 0.1
    assert estimates[2] > elbo + 0.2


@pytest.mark.parametrize("max_rows", [7, 100_000])
def test_the_label_of_an_unlabelled_row_is_summed_exactly(trained, monkeypatch, max_rows):
    """With log-weights that are a known function of (x, y) and of the draw's index, the
    estimate must be exactly log (1/K) sum_k, then logsumexp over classes for unlabelled
    rows and the row's own class for labelled ones, however the passes are cut."""
    models, x, _ = trained
    calls = []

    def known_weights(model, guide, xs, ys):
        calls.append(len(xs))
        return xs.sum(-1) / 10 + 0.7 * ys

    monkeypatch.setattr(likelihood, "log_weights", known_weights)
    y = torch.tensor([-1, 3, -1, 0, 9, -1])
    got = log_likelihood(models["m2"], x[:6], y, num_samples=4, max_rows=max_rows)
    base = x[:6].sum(-1) / 10
    per_class = base[:, None] + 0.7 * torch.arange(10)
    expected = torch.where(y < 0, torch.logsumexp(per_class, -1), base + 0.7 * y.clamp(min=0))
    assert torch.allclose(got, expected, atol=1e-5)
    assert max(calls) <= max_rows and sum(calls) == 4 * (3 * 10 + 3)


def test_labelled_rows_score_below_their_unlabelled_row(trained):
    models, x, y = trained
    unlabelled = log_likelihood(models["m2"], x[:8], num_samples=50)
    labelled = log_likelihood(models["m2"], x[:8], y[:8], num_samples=50)
    assert (labelled < unlabelled).all()


def test_bits_per_dimension():
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(1.0)


def test_evaluate_json_reports_the_log_likelihood(tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
            "--epochs", "1", "--no-progress", "--out", out]  # fmt: skip
    assert main(["train", *tiny]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--json", "--iwae", "20", "--iwae-rows", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"test_accuracy", "test_elbo", "test_log_likelihood", "iwae_samples"} <= set(report)
    assert report["iwae_samples"] == 20 and report["iwae_rows"] == 30 and report["binarized"]
    assert report["test_log_likelihood"] > report["test_elbo"]
    assert main(["evaluate", out, "--iwae", "0"]) == 2
    assert main(["evaluate", out, "--iwae-rows", "5"]) == 2
