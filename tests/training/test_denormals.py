"""Subnormal floats: a run flushes them to zero while it trains (``fit.flush_denormal``),
and leaves the thread's mode as it found it."""

from __future__ import annotations

import warnings

import pytest
import torch

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.training import Callback, FitSettings, fit
from ppl_ssvae.training.devices import denormal_mode, flushes_denormals, on_every_thread

SUBNORMAL = 1e-40  # below float32's smallest normal, 1.18e-38


def test_denormal_mode_flushes_inside_and_restores_the_threads_mode():
    before = flushes_denormals()
    with denormal_mode(True):
        assert torch.tensor([SUBNORMAL]).item() == 0.0
        assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0
        with denormal_mode(False):
            assert torch.tensor([SUBNORMAL]).item() > 0.0
        assert flushes_denormals()
    assert flushes_denormals() == before


class _ModeSeen(Callback):
    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_step_end(self, trainer, step, loss):
        self.seen += on_every_thread(flushes_denormals)

    def on_evaluate(self, trainer, record):
        self.seen += on_every_thread(flushes_denormals)


@pytest.mark.parametrize("flush", [True, False])
def test_a_run_trains_and_evaluates_in_its_mode_and_restores_the_callers(flush):
    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,), seed=0)
    seen = _ModeSeen()
    on_every_thread(lambda: torch.set_flush_denormal(not flush))
    try:
        fit(model, data, epochs=1, batch_size=400, progress=False, flush_denormal=flush,
            callbacks=[seen])  # fmt: skip
        assert set(on_every_thread(flushes_denormals)) == {not flush}
    finally:
        on_every_thread(lambda: torch.set_flush_denormal(False))
    assert len(seen.seen) > 2 and set(seen.seen) == {flush}


def test_runs_saved_before_the_setting_keep_their_mode_and_new_runs_flush():
    assert FitSettings().flush_denormal is True
    assert FitSettings.from_dict({"epochs": 3}).flush_denormal is False  # an old config.json
    assert FitSettings.from_dict({"flush_denormal": True}).flush_denormal is True
    with pytest.raises(UserError, match="flush_denormal='yes' must be true or false"):
        FitSettings(flush_denormal="yes").validate()


def test_every_thread_of_a_run_flushes_not_the_main_one_alone():
    """Intra-op threads keep their own mode; a run whose threads disagreed would compute
    bits that depend on which thread took which rows (a resume would not be exact)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.randn(512, 512) @ torch.randn(512, 512)  # the pool exists, not flushing
        assert on_every_thread(flushes_denormals) == [False, False]
        with denormal_mode(True):
            assert on_every_thread(flushes_denormals) == [True, True]
        assert on_every_thread(flushes_denormals) == [False, False]
    finally:
        torch.set_num_threads(threads)


def test_where_threads_cannot_all_be_set_none_is_changed_and_flushing_warns(monkeypatch):
    from ppl_ssvae.training import devices

    monkeypatch.setattr(devices, "_every_thread_reachable", lambda: False)
    before = flushes_denormals()
    with pytest.warns(UserWarning, match="keeps subnormal floats"), denormal_mode(True):
        assert flushes_denormals() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with denormal_mode(False):
            assert flushes_denormals() == before
