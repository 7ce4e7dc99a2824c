"""The IWAE log-likelihood: exact on a linear-Gaussian model, >= the ELBO, non-decreasing
in K, labels summed exactly, memory bounded, and `ppl-ssvae evaluate --iwae --json`."""

from __future__ import annotations

import base64
import dataclasses
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation import likelihood
from ppl_ssvae.evaluation.kept import KeptProgress
from ppl_ssvae.evaluation.likelihood import bits_per_dim, evaluation_inputs, log_likelihood
from ppl_ssvae.evaluation.metrics import mean_elbo
from ppl_ssvae.models import build
from ppl_ssvae.models.base import ModelConfig, SemiSupervisedModel
from ppl_ssvae.plates import DATA_PLATE
from ppl_ssvae.training import fit


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


class RepeatedPPCA(PPCA):
    """The same model on the repeat path: each row repeated once per importance sample."""

    vectorize_particles = False


@pytest.mark.parametrize("cls", [PPCA, RepeatedPPCA])
def test_memory_stays_bounded_and_the_estimate_does_not_depend_on_the_pass_size(cls, monkeypatch):
    torch.manual_seed(0)
    ppca = cls(PPCAConfig(input_dim=4, num_classes=1))
    x = ppca.marginal().sample((6,))
    seen = []
    weights = likelihood.log_weights

    def spy(model, guide, xs, ys, samples=None):
        assert (samples is not None) == cls.vectorize_particles
        seen.append(len(xs) * (samples or 1))  # rows x samples of the pass
        return weights(model, guide, xs, ys, samples)

    monkeypatch.setattr(likelihood, "log_weights", spy)
    small = log_likelihood(ppca, x, num_samples=5000, max_rows=700)
    assert max(seen) <= 700
    large = log_likelihood(ppca, x, num_samples=5000, max_rows=40000)
    assert torch.allclose(small, large, atol=0.03)  # different draws, same quantity
    assert torch.allclose(large, ppca.marginal().log_prob(x), atol=0.03)


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


@pytest.mark.parametrize("name", ["m2", "adgm"])  # a vectorised pass, repeated rows
@pytest.mark.parametrize("max_rows", [7, 100_000])
def test_the_label_of_an_unlabelled_row_is_summed_exactly(trained, monkeypatch, max_rows, name):
    """With log-weights that are a known function of (x, y) and of the draw's index, the
    estimate must be exactly log (1/K) sum_k, then logsumexp over classes for unlabelled
    rows and the row's own class for labelled ones, however the passes are cut."""
    models, x, _ = trained
    calls = []

    def known_weights(model, guide, xs, ys, samples=None):
        calls.append(len(xs) * (samples or 1))
        w = xs.sum(-1) / 10 + 0.7 * ys
        return w if samples is None else w.expand(samples, len(xs))

    monkeypatch.setattr(likelihood, "log_weights", known_weights)
    y = torch.tensor([-1, 3, -1, 0, 9, -1])
    got = log_likelihood(models[name], x[:6], y, num_samples=4, max_rows=max_rows)
    base = x[:6].sum(-1) / 10
    per_class = base[:, None] + 0.7 * torch.arange(10)
    expected = torch.where(y < 0, torch.logsumexp(per_class, -1), base + 0.7 * y.clamp(min=0))
    assert torch.allclose(got, expected, atol=1e-5)
    assert max(calls) <= max_rows and sum(calls) == 4 * (3 * 10 + 3)


VECTORISED = ["m2", "gmdgm", "latent", "latent-simplified", "beta-vae-classifier"]


def _tiny(name):
    pyro.set_rng_seed(0)
    model = build(name, input_dim=10, num_classes=3, z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 10), 0.4), generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([-1, 0, 2, -1, 1])


@pytest.mark.parametrize("name", VECTORISED)
@pytest.mark.parametrize("max_rows", [30, 70, 100_000])  # samples split, 1 item, all items
def test_a_vectorised_pass_draws_exactly_the_weights_of_repeated_rows(name, max_rows):
    """The sample plate lays its draws out (K, rows), as the K-times repeated rows are, so
    under one seed both paths consume the same noise and give the same estimate; the
    vectorised one runs the guide's x-layer on the items' own rows, never K-fold."""
    model, x, y = _tiny(name)
    assert model.vectorize_particles
    x_layer = model.q.q_z.trunk.layers[0]  # q(z|x, .)'s block on x
    x_rows = []
    hook = x_layer.register_forward_hook(lambda m, inputs, out: x_rows.append(inputs[0].shape))
    vectorised = log_likelihood(model, x, y, num_samples=50, seed=3, max_rows=max_rows)
    items = int(torch.where(y < 0, 3, 1).sum())  # (row, label) pairs: unlabelled rows x 3
    items_per_pass = min(max(1, max_rows // 50), items)
    assert all(len(s) == 2 and s[0] <= items_per_pass for s in x_rows), x_rows
    model.vectorize_particles = False  # the instance takes the repeat path
    x_rows.clear()
    repeated = log_likelihood(model, x, y, num_samples=50, seed=3, max_rows=max_rows)
    hook.remove()
    assert max(s[0] for s in x_rows) == min(50, max_rows) * items_per_pass
    assert torch.allclose(vectorised, repeated, atol=1e-5), (vectorised - repeated).abs().max()


@pytest.mark.parametrize("name", ["m2", "gmdgm"])
def test_vectorised_estimates_agree_with_repeated_rows_and_row_by_row(name):
    """Different draws (other seeds), the same quantity: the vectorised estimate of all rows
    at once, of one row at a time, and the repeat path's, within Monte Carlo error (per-row
    sd <= 0.035 at K = 20000 for these models, so 0.2 is over 4 sd of a difference)."""
    model, x, y = _tiny(name)
    together = log_likelihood(model, x, y, num_samples=20000, seed=0)
    one_at_a_time = torch.cat(
        [log_likelihood(model, x[i : i + 1], y[i : i + 1], num_samples=20000, seed=1 + i)
         for i in range(len(x))]
    )  # fmt: skip
    model.vectorize_particles = False
    repeated = log_likelihood(model, x, y, num_samples=20000, seed=9)
    assert torch.allclose(together, one_at_a_time, atol=0.2), together - one_at_a_time
    assert torch.allclose(together, repeated, atol=0.2), together - repeated
    assert (together.max() - together.min()).item() > 0.5  # rows that differ, not a constant


def test_a_guide_latent_without_one_draw_per_sample_is_refused():
    """A latent whose distribution ignored the sample plate would give K equal weights."""
    site = {"fn": dist.Normal(torch.zeros(3), 1.0), "value": torch.zeros(3), "mask": None}
    assert likelihood._row_log_prob(site, 3, samples=4).shape == (4, 3)  # a model site
    with pytest.raises(ValueError, match="one draw per importance sample"):
        likelihood._row_log_prob(site, 3, samples=4, drawn="z")


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


def test_likelihood_report_is_a_function_of_its_seed():
    """Its ELBO's z draws are seeded as the IWAE's are: the same report on every call, a
    different one under another seed, and the caller's RNG stream left where it was."""
    model, x, _ = _tiny("m2")
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = likelihood.likelihood_report(model, x, num_samples=20, seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    assert likelihood.likelihood_report(model, x, num_samples=20, seed=0) == first
    other = likelihood.likelihood_report(model, x, num_samples=20, seed=1)
    assert other["test_elbo"] != first["test_elbo"]


def test_every_pass_hands_freed_memory_back(monkeypatch):
    """glibc's heap fragments over thousands of same-shape passes (22 GB at K = 5000 on
    1000 images before this), so each pass ends with a trim."""
    model, x, y = _tiny("m2")
    trims, passes = [], []
    monkeypatch.setattr(likelihood, "release_freed_memory", lambda: trims.append(1))
    weights = likelihood.log_weights
    monkeypatch.setattr(
        likelihood, "log_weights", lambda *a, **k: passes.append(1) or weights(*a, **k)
    )
    log_likelihood(model, x, y, num_samples=50, seed=0, max_rows=70)
    assert len(passes) > 1 and len(trims) == len(passes)
    assert likelihood._MALLOC_TRIM is not None  # Linux CI: the trim is real
    likelihood.release_freed_memory()


def test_grey_levels_under_a_bernoulli_likelihood_are_refused_in_one_line():
    """A Bernoulli log-density of grey levels is not a log-likelihood: log_likelihood
    refuses them and says what to use; the binarised inputs are scored."""
    model, _, _ = _tiny("m2")
    grey = torch.rand(4, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="grey levels.*evaluation_inputs.*likelihood_report"):
        log_likelihood(model, grey, num_samples=3)
    binary = likelihood.evaluation_inputs(model, grey)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(log_likelihood(model, binary, num_samples=3)).all()
    report = likelihood.likelihood_report(model, grey, num_samples=3)  # binarises itself
    assert report["binarized"] and math.isfinite(report["test_log_likelihood"])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_epoch_elbo_is_of_the_inputs_the_likelihood_describes(likelihood):
    """The epoch records' validation ELBO: a Bernoulli model's on the same fixed
    binarisation compare scores, not on grey levels; a Gaussian model's on x itself."""
    from ppl_ssvae.evaluation.metrics import classification_report, elbo_report

    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    pyro.set_rng_seed(0)
    model = build("m2", input_dim=64, num_classes=10, z_dim=3, hidden=(16,), likelihood=likelihood)
    x_val = data.x_val
    inputs = evaluation_inputs(model, x_val, 0)
    assert (likelihood == "bernoulli") == bool(((inputs == 0) | (inputs == 1)).all())
    for report in (classification_report, elbo_report):
        pyro.set_rng_seed(1)
        reported = report(model, data)["elbo"]
        pyro.set_rng_seed(1)
        assert reported == pytest.approx(mean_elbo(model, inputs), abs=1e-9)
    pyro.set_rng_seed(1)
    grey = mean_elbo(model, x_val)
    assert (reported == pytest.approx(grey, abs=1e-9)) == (likelihood == "gaussian")


class Interrupted(Exception):
    """Stands for the process being killed after a save."""


def _keeper(store, key, stop_after=None):
    def write(text):
        store["record"] = text
        store["writes"] = store.get("writes", 0) + 1
        if store["writes"] == stop_after:
            raise Interrupted

    return KeptProgress(key, lambda: store.get("record", "").encode() or None, write, 0)


@pytest.mark.parametrize("name", ["m2", "latent"])
def test_an_interrupted_estimate_resumes_with_the_same_draws(trained, monkeypatch, name):
    """Killed after its third saved pass, the estimate read back goes on from there and
    ends at the uninterrupted estimate to the bit, without repeating the passes done."""
    models, x, _ = trained
    model = models[name]
    full = log_likelihood(model, x, num_samples=8, seed=3, max_rows=40)
    passes = []
    weights = likelihood.log_weights
    monkeypatch.setattr(
        likelihood, "log_weights", lambda *a, **k: passes.append(1) or weights(*a, **k)
    )
    store = {}
    with pytest.raises(Interrupted):
        log_likelihood(
            model, x, num_samples=8, seed=3, max_rows=40, kept=_keeper(store, {"k": 1}, 3)
        )
    total = len(x) * (10 if model.label_in_joint else 1) // 5  # items / (40 // 8) per pass
    assert len(passes) == 3
    resumed = log_likelihood(
        model, x, num_samples=8, seed=3, max_rows=40, kept=_keeper(store, {"k": 1})
    )
    assert torch.equal(resumed, full)
    assert len(passes) == total  # 3 before the interruption, the rest after


@pytest.mark.parametrize("spoil", [
    lambda r: r | {"key": {"k": 2}},  # another checkpoint, K, subset or seed
    lambda r: r | {"per_pass": 7},  # another pass size
    lambda r: r | {"done": r["done"][:-1]},  # not a whole number of passes
    lambda r: r | {"rng": "not base64!"},
    lambda r: r | {"rng": base64.b64encode(b"short").decode()},  # not a generator's state
])  # fmt: skip
def test_a_record_that_does_not_match_is_not_used(trained, monkeypatch, spoil):
    models, x, _ = trained
    model = models["m2"]
    full = log_likelihood(model, x, num_samples=8, seed=3, max_rows=40)
    store = {}
    with pytest.raises(Interrupted):
        log_likelihood(
            model, x, num_samples=8, seed=3, max_rows=40, kept=_keeper(store, {"k": 1}, 2)
        )
    store["record"] = json.dumps(spoil(json.loads(store["record"])))
    passes = []
    weights = likelihood.log_weights
    monkeypatch.setattr(
        likelihood, "log_weights", lambda *a, **k: passes.append(1) or weights(*a, **k)
    )
    again = log_likelihood(
        model, x, num_samples=8, seed=3, max_rows=40, kept=_keeper(store, {"k": 1})
    )
    assert torch.equal(again, full) and len(passes) == len(x) * 10 // 5  # every pass again
    store["record"] = "{not json"
    assert torch.equal(log_likelihood(model, x, num_samples=8, seed=3, max_rows=40,
                                      kept=_keeper(store, {"k": 1})), full)  # fmt: skip


def test_kept_that_is_not_a_keeper_is_refused_in_one_line(trained):
    models, x, _ = trained
    with pytest.raises(UserError, match="kept='progress.json' must be a KeptProgress"):
        log_likelihood(models["m2"], x, num_samples=2, kept="progress.json")
