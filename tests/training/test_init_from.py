"""Starting a flow from a trained Gaussian run (fit(..., init_from=RUN), train --init-from):
every shared weight is copied, so the new model's guide is the run's at the first step."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.guides import GUIDES
from ppl_ssvae.models import build
from ppl_ssvae.runs.directory import BEST, RunDir
from ppl_ssvae.training import fit
from ppl_ssvae.training.init_from import init_from

FLOWS = [name for name in GUIDES if "base" in GUIDES[name].defaults]
SIZES = {"input_dim": 64, "num_classes": 10, "z_dim": 3, "hidden": (16,)}


@pytest.fixture(scope="module")
def data():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory, data):
    """A trained M2 run with the Gaussian guide, and ADGM's for the auxiliary latent."""
    runs = {}
    for name in ("m2", "adgm"):
        pyro.set_rng_seed(0)
        model = build(name, **SIZES)
        out = tmp_path_factory.mktemp(name)
        fit(model, data, epochs=1, batch_size=400, progress=False, out=out)
        RunDir(out).load_weights(model, BEST)
        runs[name] = (out, model)
    return runs


@pytest.mark.parametrize("flow", FLOWS)
def test_a_flow_started_from_a_gaussian_run_is_that_runs_guide(gaussian_run, flow):
    run, trained = gaussian_run["m2"]
    pyro.set_rng_seed(5)  # other initial weights than the run's
    model = build("m2", guide=flow, **SIZES)
    record = init_from(model, run)
    assert record["epoch"] == torch.load(run / BEST, weights_only=True)["epoch"]
    assert record["copied"] > 0 and record["sha256"]
    x = torch.bernoulli(torch.rand(6, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.classify(x), trained.classify(x))  # the classifier
    y = torch.arange(10)[:, None]
    gaussian, flowed = trained.q.q_z(x=x, y=y), model.q.q_z(x=x, y=y)
    torch.manual_seed(1)
    with torch.no_grad():
        z = flowed.rsample()
        tolerance = 1e-2 if flow == "pyro-spline" else 1e-5  # see test_flow_bases
        assert torch.allclose(flowed.log_prob(z), gaussian.log_prob(z), atol=tolerance)
    mine = model.state_dict()
    generative = [k for k in trained.state_dict() if not k.startswith("q.")]
    assert generative  # the decoder and prior networks: copied as they are
    assert all(torch.equal(mine[k], trained.state_dict()[k]) for k in generative)


def test_both_latents_of_an_auxiliary_model_start_from_the_run(gaussian_run):
    run, trained = gaussian_run["adgm"]
    pyro.set_rng_seed(5)
    model = build("adgm", guide="pyro-iaf", **SIZES)
    init_from(model, run)
    x = torch.rand(4, 64).round()
    for latent in ("q_a", "q_z"):
        mine, theirs = getattr(model.q, latent), getattr(trained.q, latent)
        assert torch.equal(mine.head.base.loc.weight, theirs.head.loc.weight), latent
    assert torch.equal(model.classify(x), trained.classify(x))


def test_fit_records_where_it_started(gaussian_run, data, tmp_path):
    run, _ = gaussian_run["m2"]
    pyro.set_rng_seed(5)
    model = build("m2", guide="maf", **SIZES)
    fit(model, data, epochs=1, batch_size=400, progress=False, out=tmp_path / "flow",
        init_from=run)  # fmt: skip
    config = json.loads((tmp_path / "flow" / "config.json").read_text())
    assert config["init_from"]["run"] == str(run) and config["init_from"]["checkpoint"] == BEST
    with pytest.raises(UserError, match="resumed run continues from its checkpoint"):
        fit(model, data, epochs=2, progress=False, out=tmp_path / "flow", resume=True,
            init_from=run)  # fmt: skip


def test_a_run_of_another_model_or_shape_is_refused(gaussian_run):
    run, _ = gaussian_run["m2"]
    with pytest.raises(UserError, match="trained model 'm2', not 'gmdgm'"):
        init_from(build("gmdgm", guide="maf", **SIZES), run)
    with pytest.raises(UserError, match=r"of shape \(16, 3\), this model \(16, 5\): start from"):
        init_from(build("m2", guide="maf", **{**SIZES, "z_dim": 5}), run)
    with pytest.raises(UserError, match="not a run directory"):
        init_from(build("m2", guide="maf", **SIZES), run / "nothing")


def test_a_standard_base_flow_run_cannot_give_a_gaussian_base(tmp_path, data):
    pyro.set_rng_seed(0)
    old = build("m2", guide="maf", guide_args={"base": "standard"}, **SIZES)
    fit(old, data, epochs=1, batch_size=400, progress=False, out=tmp_path / "old")
    with pytest.raises(UserError, match="no weights for this model's q.q_z.head.flow.base"):
        init_from(build("m2", guide="maf", **SIZES), tmp_path / "old")


def test_cli_init_from_is_recorded_and_refused_in_one_line(gaussian_run, tmp_path, capsys):
    run, _ = gaussian_run["m2"]
    tiny = ["--dataset", "digits", "--labels", "50", "--z-dim", "3", "--hidden", "16",
            "--batch-size", "400", "--epochs", "1", "--no-progress", "--guide", "maf"]  # fmt: skip
    out = tmp_path / "flow"
    assert main(["train", *tiny, "--init-from", str(run), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["spec"]["init_from"] == str(run) and config["init_from"]["copied"] > 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["train", *tiny, "--z-dim", "4", "--init-from", str(run), "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "of shape" in err and len(err.splitlines()) == 1 and not bad.exists()
