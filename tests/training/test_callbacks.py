"""The open loop: callbacks, their state across a kill -9, early stopping, schedules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from pyro import poutine

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.training import (
    AlphaSchedule,
    Callback,
    EarlyStopping,
    KLWarmup,
    build_callback,
    fit,
    register_callback,
    warmup_weight,
)
from ppl_ssvae.training.scales import SiteScales


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _model(data, **kw):
    return build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,),
                 alpha=5.0, seed=0, **kw)  # fmt: skip


FAST = {"batch_size": 100, "labelled_share": 0.3, "lr": 1e-3, "progress": False}


# -- the KL weight is a weight on the ELBO's z terms, and so is its gradient ---------------
def _hand_written_loss(model, x, y, beta: float) -> torch.Tensor:
    """-(log p(x|y,z) + log p(y) + beta (log p(z) - log q(z|x,y))) + alpha (-log q(y|x)),
    summed over labelled rows, from one draw of z (traces of the guide and the model; the
    label's unobserved half is given its value, so it draws nothing and is masked out)."""
    guide = poutine.condition(model.guide, data={"y_unobserved": y})
    guide_trace = poutine.trace(guide).get_trace(x, y)
    given = poutine.condition(model.model, data={"y_unobserved": y})
    joint = poutine.trace(poutine.replay(given, trace=guide_trace)).get_trace(x, y)
    total = torch.zeros(())
    for trace, sign in ((joint, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and "log_prob_sum" in site:
                total = total + sign * (beta if name == "z" else 1.0) * site["log_prob_sum"]
    return -total


def _labelled(digits):
    x, y = digits.x_train[:6], digits.y_train[:6].clone()
    y[:] = torch.arange(6) % 10  # labelled rows: one z draw per row
    return x, y


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_kl_weight_scales_the_z_terms_of_the_loss_and_its_gradients(digits, beta):
    """Against the hand-written bound on the same draw of z (Trace_ELBO with the label's
    unobserved half given, so neither side enumerates or draws it)."""
    model = _model(digits)
    x, y = _labelled(digits)
    condition = {"y_unobserved": y}
    pyro.set_rng_seed(1)
    with SiteScales({"z": beta}):
        loss = pyro.infer.Trace_ELBO().differentiable_loss(
            poutine.condition(model.model, data=condition),
            poutine.condition(model.guide, data=condition), x, y,
        )  # fmt: skip
    got = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    pyro.set_rng_seed(1)
    expected = _hand_written_loss(model, x, y, beta)
    want = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_kl_weight_is_linear_in_the_enumerated_objective(digits):
    """Under TraceEnum_ELBO (the label enumerated on unlabelled rows) the loss and its
    gradients are A + beta B on one draw, and beta = 1 is the unweighted objective."""
    model = _model(digits)
    x, y = digits.x_train[:8], digits.y_train[:8].clone()
    y[::2] = -1
    elbo = model.make_elbo()

    def loss_and_grads(beta):
        pyro.set_rng_seed(2)
        with SiteScales({} if beta is None else {"z": beta}):
            loss = elbo.differentiable_loss(model.model, model.guide, x, y)
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    zero, half, one, plain = (loss_and_grads(b) for b in (0.0, 0.5, 1.0, None))
    for a, h, o, p in zip(zero, half, one, plain, strict=True):
        torch.testing.assert_close(h, (a + o) / 2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o, p)
    assert not torch.allclose(zero[0], one[0])


def test_warmup_schedules_follow_their_formulas():
    linear = [warmup_weight(t, 10) for t in (0, 5, 10, 20)]
    assert linear == [0.0, 0.5, 1.0, 1.0]
    assert warmup_weight(5, 10, start=0.2) == pytest.approx(0.6)
    # Fu et al. 2019: 40 steps, 4 cycles of 10, rising over the first half of each.
    cyc = [warmup_weight(t, 40, "cyclical", cycles=4, ratio=0.5) for t in (0, 2, 5, 7, 10, 12, 40)]
    assert cyc == pytest.approx([0.0, 0.4, 1.0, 1.0, 0.0, 0.4, 1.0])


def test_kl_warmup_records_its_weight_each_epoch(digits):
    """The record holds the weight the epoch's last step trained with: linear over the
    first 2 epochs' 2S steps, (t / 2S) at step t counted from 0."""
    model = _model(digits)
    result = fit(model, digits, epochs=3, callbacks=[KLWarmup(epochs=2), Counter()], **FAST)
    s = result.history[0]["steps_seen"]
    weights = [h["kl_weight"] for h in result.history]
    assert weights == pytest.approx([(s - 1) / (2 * s), (2 * s - 1) / (2 * s), 1.0])


def test_alpha_schedule_refuses_a_model_without_a_classifier_weight(digits):
    model = _model(digits)
    model.config.alpha = 0.0
    with pytest.raises(UserError, match="alpha > 0"):
        fit(model, digits, epochs=1, callbacks=[AlphaSchedule()], **FAST)


# -- early stopping --------------------------------------------------------------------------
def test_early_stopping_keeps_the_last_record_and_checkpoint(digits, tmp_path):
    model = _model(digits)
    stop = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=10.0)
    result = fit(model, digits, epochs=5, out=tmp_path, callbacks=[stop], **FAST)
    assert result.stopped == "early_stopping"
    assert [h["epoch"] for h in result.history] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["callbacks"]["EarlyStopping"]["wait"] == 1


def test_early_stopping_names_a_missing_monitor(digits):
    with pytest.raises(UserError, match="val_acc.*lacks"):
        fit(_model(digits), digits, epochs=2, callbacks=[EarlyStopping("val_acc")], **FAST)


# -- a researcher's own callback, registered and rebuilt by name ------------------------------
@register_callback("test_counter")
class Counter(Callback):
    """Counts steps; its count is state that a resume must continue."""

    def __init__(self, every: int = 1) -> None:
        self.every, self.steps = every, 0

    def on_step_end(self, trainer, step, loss):
        self.steps += 1

    def on_epoch_end(self, trainer, record):
        record["steps_seen"] = self.steps

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_registered_callbacks_are_built_by_name_and_checked():
    counter = build_callback("test_counter", {"every": 2})
    assert isinstance(counter, Counter) and counter.describe() == {
        "name": "test_counter", "args": {"every": 2}}  # fmt: skip
    with pytest.raises(UserError, match="takes no period"):
        build_callback("test_counter", {"period": 2})
    with pytest.raises(UserError, match="unknown callback"):
        build_callback("no-such-callback")


# -- state across kill -9 ----------------------------------------------------------------------
KILLED_RUN = """
import os, signal, sys
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.models import build
from ppl_ssvae.training import Callback, EarlyStopping, KLWarmup, fit
from ppl_ssvae.training.callbacks import REPORT

class KillAfter(Callback):
    order = REPORT + 1  # after the checkpoint of the epoch is on disk
    def on_epoch_end(self, trainer, record):
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

data = semi_supervised_split(load("digits"), labels=50, seed=0)
model = build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,), alpha=5.0, seed=0)
fit(model, data, epochs=4, out=sys.argv[1], lr_scheduler="CosineAnnealingLR",
    lr_scheduler_args={"T_max": 4}, batch_size=100, labelled_share=0.3, progress=False,
    callbacks=[KLWarmup(epochs=3, schedule="cyclical", cycles=2),
               EarlyStopping(patience=10), KillAfter()])
"""


def _stateful(data):
    return [KLWarmup(epochs=3, schedule="cyclical", cycles=2), EarlyStopping(patience=10)]


def test_callback_state_survives_kill_9_and_resume_bit_for_bit(digits, tmp_path):
    schedule = {"lr_scheduler": "CosineAnnealingLR", "lr_scheduler_args": {"T_max": 4},
                "batch_size": 100, "labelled_share": 0.3, "progress": False}  # fmt: skip
    straight = _model(digits)
    whole = fit(straight, digits, epochs=4, out=tmp_path / "a", callbacks=_stateful(digits),
                **schedule)  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_RUN), str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed_model = _model(digits)
    resumed = fit(resumed_model, digits, epochs=4, out=tmp_path / "b", resume=True,
                  callbacks=_stateful(digits), progress=False)  # fmt: skip
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    assert [strip(h) for h in resumed.history] == [strip(h) for h in whole.history]
    assert [h["lr"] for h in whole.history] == pytest.approx(
        [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)]
    )


# -- optimizers and schedulers by name ---------------------------------------------------------
def test_any_torch_optimizer_by_name_with_its_arguments(digits):
    model = _model(digits)
    result = fit(model, digits, epochs=1, optimizer="AdamW",
                 optimizer_args={"weight_decay": 0.1}, **FAST)  # fmt: skip
    assert result.history[0]["train_loss"] < 1e6
    with pytest.raises(UserError, match="adamw takes no 'momentum'"):
        fit(_model(digits), digits, epochs=1, optimizer="adamw", optimizer_args={"momentum": 0.9})
    with pytest.raises(UserError, match="unknown lr_scheduler 'Cosine'"):
        fit(_model(digits), digits, epochs=1, lr_scheduler="Cosine")
    with pytest.raises(UserError, match="CosineAnnealingLR takes no T"):
        fit(_model(digits), digits, epochs=1, lr_scheduler="CosineAnnealingLR",
            lr_scheduler_args={"T": 3})  # fmt: skip
