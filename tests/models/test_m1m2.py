"""M1+M2 (Kingma et al. 2014 sec 3.2): each stage's loss against its bound written by hand,
the stage schedule, resume in either stage, an M1 given as a trained run, the estimator."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
import torch.distributions as td
from torch.nn import functional as F

from ppl_ssvae.data import Dataset, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.training import Callback, fit
from tests.models.exact import loss_and_sites, multi_input_gaussian, multi_input_hidden
from tests.models.test_m1 import loss_and_latent

D, K, Z1, Z2 = 10, 3, 4, 3
SIZES = {"z_dim": Z1, "hidden": (8,), "z2_dim": Z2, "m2_hidden": (6,)}


def _model(**kw):
    torch.manual_seed(0)
    return build("m1-m2", input_dim=D, num_classes=K, **{**SIZES, **kw})


def _m1_params(model):
    return [p for n, p in model.named_parameters() if n.startswith("m1.")]


def _m2_params(model):
    return [p for n, p in model.named_parameters() if n.startswith("m2.")]


# -- each stage's loss, written by hand ---------------------------------------------------------
@pytest.mark.usefixtures("float64")
def test_stage_1_loss_and_gradients_are_m1s_elbo_and_reach_m1_only():
    """-sum_n [log p(x_n|z1) + log N(z1; 0, I) - log q(z1|x_n)], z1 ~ q(z1|x_n); labels ignored."""
    model = _model()
    model.training_stage(1)
    assert model.stage == "m1"
    x, y = torch.bernoulli(torch.rand(6, D)), torch.tensor([0, -1, 2, -1, 1, -1])
    loss, z1 = loss_and_latent(model, x, y, "z1")
    q = multi_input_gaussian(model.m1.q.q_z, [x])
    logits = model.m1.p_x.head.logits(model.m1.p_x.trunk(z1))
    log_w = (td.Bernoulli(logits=logits).log_prob(x).sum(-1)
             + td.Normal(0.0, 1.0).log_prob(z1).sum(-1) - q.log_prob(z1).sum(-1))  # fmt: skip
    expected = -log_w.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    m1 = _m1_params(model)
    for g, w in zip(torch.autograd.grad(loss, m1, retain_graph=True),
                    torch.autograd.grad(expected, m1), strict=True):  # fmt: skip
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10)
    assert all(g is None for g in torch.autograd.grad(loss, _m2_params(model), allow_unused=True))


def _m2_bound(model, f, y, z, alpha, entropy=True):
    """M2's -J^alpha (Kingma eq. 9) on the features f, from the weights: per class k,
    L(f, k) = log N(f; mu(z_k, k), I) + log p(k) + log N(z_k; 0, I) - log q(z_k|f, k)."""
    m2 = model.m2
    log_q_y = F.log_softmax(m2.q.q_y.net(f), -1)
    bounds = []
    for k in range(K):
        label = torch.full((len(f),), k)
        q_z = multi_input_gaussian(m2.q.q_z, [f], label)
        loc = m2.p_x.head.loc(multi_input_hidden(m2.p_x.trunk, [z[k]], label))
        log_pf = td.Normal(loc, 1.0).log_prob(f).sum(-1)
        log_pz = td.Normal(0.0, 1.0).log_prob(z[k]).sum(-1)
        bounds.append(log_pf + math.log(1.0 / K) + log_pz - q_z.log_prob(z[k]).sum(-1))
    L = torch.stack(bounds, -1)
    y0 = y.clamp(min=0)[:, None]
    labelled = L.gather(1, y0).squeeze(1) + alpha * log_q_y.gather(1, y0).squeeze(1)
    q = log_q_y.exp()
    unlabelled = (q * L).sum(-1) - entropy * (q * log_q_y).sum(-1)
    return -torch.where(y >= 0, labelled, unlabelled).sum()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("y", [[2, -1, 0, -1, -1, 1], [-1] * 6, [0, 1, 2, 2, 1, 0]])
def test_stage_2_loss_is_m2s_bound_on_m1s_latent_means(y):
    model = _model(alpha=2.5, m1_epochs=1)
    model.training_stage(2)
    assert model.stage == "m2"
    x, y = torch.bernoulli(torch.rand(6, D)), torch.tensor(y)
    pyro.set_rng_seed(3)
    loss, z = loss_and_sites(model, x, y, "z")
    assert z.shape == (K, 6, Z2)
    f = multi_input_gaussian(model.m1.q.q_z, [x]).loc.detach()  # E_q[z1|x], by hand
    expected = _m2_bound(model, f, y, z, alpha=2.5)
    assert loss == pytest.approx(expected.item(), rel=1e-9)
    # Each term counts: without the entropy (or with another alpha) the bound differs.
    assert (
        abs(loss - _m2_bound(model, f, y, z, alpha=2.5, entropy=False).item()) > 1e-6
        or (y >= 0).all()
    )
    assert abs(loss - _m2_bound(model, f, y, z, alpha=1.0).item()) > 1e-6 or (y < 0).all()
    # The same numbers as the library's own M2 on the features, with the same noise.
    pyro.set_rng_seed(3)
    alone = model.m2.make_elbo().loss(model.m2.model, model.m2.guide, f, y)
    assert loss == pytest.approx(alone, rel=1e-9)


def test_stage_2_gradients_reach_m2_only():
    model = _model(m1_epochs=1)
    model.training_stage(2)
    x, y = torch.bernoulli(torch.rand(6, D)), torch.tensor([0, -1, 2, -1, 1, -1])
    model.make_elbo().loss_and_grads(model.model, model.guide, x, y)
    assert all(p.grad is None for p in _m1_params(model))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _m2_params(model))


def test_stages_follow_the_epoch():
    model = _model(m1_epochs=2)
    stages = []
    for epoch in (1, 2, 3, 9, None):
        model.training_stage(epoch)
        stages.append(model.stage)
    assert stages == ["m1", "m1", "m2", "m2", None]
    given = _model(m1_epochs=2, m1="some/run")  # an M1 given as a run: no stage 1
    given.training_stage(1)
    assert given.stage == "m2"
    with pytest.raises(UserError, match="m2_input must be one of mean, sample"):
        _model(m2_input="mode")


# -- training in stages, resume -----------------------------------------------------------------
def _toy(d=D, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((150, d)) < 0.3).astype(np.float32)
    y = rng.integers(0, K, 150)
    toy = Dataset("toy", x, y, x[:30], y[:30], ["a", "b", "c"], default_validation_size=20)
    return semi_supervised_split(toy, labels=30, seed=0)


class Snapshots(Callback):
    def __init__(self):
        self.states, self.stages = [], []

    def on_step_end(self, trainer, step, loss):
        if step == 1:
            self.stages.append(trainer.model.stage)

    def on_evaluate(self, trainer, record):
        self.stages.append(trainer.model.stage)

    def on_epoch_end(self, trainer, record):
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def _changed(before, after, prefix):
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_fit_trains_m1_then_m2_and_leaves_the_whole_model():
    model = _model(m1_epochs=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = Snapshots()
    fit(model, _toy(), epochs=2, batch_size=50, progress=False, callbacks=[snaps])
    first, second = snaps.states
    assert _changed(start, first, "m1.") and not _changed(start, first, "m2.")
    assert _changed(first, second, "m2.") and not _changed(first, second, "m1.")
    # Each epoch's steps are in its stage; its evaluation sees the whole model.
    assert snaps.stages == ["m1", None, "m2", None] and model.stage is None


def _strip(history):
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def test_resume_in_either_stage_reproduces_the_uninterrupted_run(tmp_path):
    """Stopped in stage 1 (after epoch 1) and in stage 2 (after epoch 3) of 2 + 2 epochs."""
    data = _toy()
    options = {"batch_size": 50, "progress": False}
    straight = _model(m1_epochs=2)
    whole = fit(straight, data, epochs=4, out=tmp_path / "a", **options)
    fit(_model(m1_epochs=2), data, epochs=1, out=tmp_path / "b", **options)
    fit(_model(m1_epochs=2), data, epochs=3, out=tmp_path / "b", resume=True, **options)
    resumed_model = _model(m1_epochs=2)
    resumed = fit(resumed_model, data, epochs=4, out=tmp_path / "b", resume=True, **options)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert _strip(resumed.history) == _strip(whole.history)


# -- an M1 given as a trained run ----------------------------------------------------------------
def _m1_run(path, data, **kw):
    torch.manual_seed(1)
    m1 = build("m1", input_dim=data.input_dim, num_classes=K, **{"z_dim": Z1, "hidden": (8,), **kw})
    fit(m1, data, epochs=1, batch_size=50, out=path, progress=False)
    return m1


def test_an_m1_run_is_m1_recorded_and_only_m2_trains(tmp_path):
    from ppl_ssvae.runs import load_run

    data = _toy()
    _m1_run(tmp_path / "m1", data)
    model = _model(m1=str(tmp_path / "m1"), m1_epochs=5)
    fit(model, data, epochs=1, batch_size=50, out=tmp_path / "m1m2", progress=False)
    trained = load_run(tmp_path / "m1", data=data)
    trained.load_weights("best")
    for key, value in trained.model.state_dict().items():
        assert torch.equal(model.m1.state_dict()[key], value), key  # copied, then frozen
    config = json.loads((tmp_path / "m1m2" / "config.json").read_text())
    assert config["model"]["m1"] == str(tmp_path / "m1")
    record = config["parts_from_runs"]["m1"]
    assert record["run"] == str(tmp_path / "m1") and record["epoch"] == 1
    assert record["sha256"] == (tmp_path / "m1" / "best.pt.sha256").read_text().strip()
    # The run reloads and classifies as trained.
    again = load_run(tmp_path / "m1m2", data=data)
    again.load_weights("last")
    assert torch.equal(again.model.classify(data.x_test), model.classify(data.x_test))


def test_a_run_of_another_model_or_shape_is_refused_in_one_line(tmp_path):
    data = _toy()
    torch.manual_seed(0)
    m2 = build("m2", input_dim=D, num_classes=K, z_dim=2, hidden=(8,))
    fit(m2, data, epochs=1, batch_size=50, out=tmp_path / "m2", progress=False)
    with pytest.raises(UserError, match=r"trained model 'm2'; m1-m2 needs an 'm1' run$"):
        fit(_model(m1=str(tmp_path / "m2")), data, epochs=1, progress=False)
    _m1_run(tmp_path / "narrow", _toy(d=8), z_dim=Z1)
    with pytest.raises(UserError, match=r"has another m1: input_dim=8 \(this model: 10\)"):
        fit(_model(m1=str(tmp_path / "narrow")), data, epochs=1, progress=False)
    _m1_run(tmp_path / "wide", data)
    with pytest.raises(UserError, match=r"has another m1: z_dim=4 \(this model: 5\)"):
        fit(_model(m1=str(tmp_path / "wide"), z_dim=5), data, epochs=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_m1_flag_trains_and_records(tmp_path):
    from ppl_ssvae.cli import main

    common = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
              "--epochs", "1", "--no-progress"]  # fmt: skip
    assert main(["train", "--model", "m1", *common, "--out", str(tmp_path / "m1")]) == 0
    assert main(["train", "--model", "m1-m2", *common, "--z2-dim", "3", "--m2-hidden", "16",
                 "--m1", str(tmp_path / "m1"), "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["model"]["m1"] == str(tmp_path / "m1")
    assert config["parts_from_runs"]["m1"]["run"] == str(tmp_path / "m1")


# -- the whole model: likelihood, sampling, the estimator ------------------------------------------
def test_iwae_is_the_whole_stacked_models_bound():
    """Outside a stage the loss is the stacked model's ELBO (checked against its hand-written
    form in tests/test_objectives.py), and the IWAE estimate read off the same model and
    guide is a tighter bound: above the ELBO on average."""
    from ppl_ssvae.evaluation.likelihood import log_likelihood

    model = _model()
    x = torch.bernoulli(torch.rand(20, D))
    elbo = -model.make_elbo().loss(model.model, model.guide, x, torch.full((20,), -1)) / 20
    iwae = log_likelihood(model, x, num_samples=64).mean().item()
    assert math.isfinite(iwae) and iwae > elbo


def test_samples_come_through_both_decoders():
    model = _model()
    assert model.sample(5).shape == (5, D) and model.sample(0).shape == (0, D)
    pixels = model.sample(4, y=1, mean=True)
    assert ((pixels > 0) & (pixels < 1)).all()
    encoded = model.encode(torch.rand(3, D))
    assert encoded["z1_mean"].shape == (3, Z1) and encoded["z_mean"].shape == (3, Z2)
    assert model.decode(encoded["z_mean"], torch.tensor([0, 1, 2])).mean.shape == (3, D)


def test_sklearn_estimator_fits_and_predicts_m1_m2():
    from sklearn.datasets import load_digits

    from ppl_ssvae.sklearn import SSVAEClassifier

    x, y = load_digits(return_X_y=True)
    x, y = x[:400] / 16.0, y[:400].copy()
    y[100:] = -1
    clf = SSVAEClassifier(model="m1-m2", epochs=2, batch_size=100, model_args={
        "z_dim": 4, "hidden": [16], "z2_dim": 3, "m2_hidden": [16], "m1_epochs": 1})  # fmt: skip
    clf.fit(x, y)
    assert clf.model_.name == "m1-m2" and clf.predict(x[:7]).shape == (7,)
    assert clf.predict_proba(x[:7]).shape == (7, 10)


def test_data_parallel_training_is_refused(monkeypatch):
    """DDP gives every parameter a gradient, so a stage's frozen part would move."""
    from ppl_ssvae.training import distributed

    monkeypatch.setattr(distributed, "current", lambda: object())
    with pytest.raises(UserError, match="m1-m2 trains in stages"):
        fit(_model(), _toy(), epochs=1, progress=False)


def test_each_stage_starts_a_fresh_optimizer_at_the_full_learning_rate():
    """lr_decay runs per stage: M2's first step is at the initial lr, not M1's decayed one."""
    seen = []

    class Rates(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 1:
                seen.append([g["lr"] for g in trainer.optim.optimizer.param_groups])

    fit(_model(m1_epochs=2), _toy(), epochs=3, batch_size=50, lr=1e-3, lr_decay=0.5,
        progress=False, callbacks=[Rates()])  # fmt: skip
    decay = 0.5 ** (1 / 3)  # per step: 3 batches an epoch
    assert seen[0] == [pytest.approx(1e-3 * decay)] and seen[2] == [pytest.approx(1e-3 * decay)]
    assert seen[1] == [pytest.approx(1e-3 * decay**4)]
    with pytest.raises(UserError, match="starts its optimizer afresh"):
        fit(_model(), _toy(), epochs=1, lr_scheduler="StepLR", lr_scheduler_args={"step_size": 1})
