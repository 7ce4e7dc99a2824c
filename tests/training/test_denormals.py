"""Subnormal floats: a run flushes them to zero while it trains (``fit.flush_denormal``),
and leaves the thread's mode as it found it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.training import Callback, FitSettings, fit
from ppl_ssvae.training.devices import denormal_mode, flushes_denormals

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
        self.seen.append(flushes_denormals())

    def on_evaluate(self, trainer, record):
        self.seen.append(flushes_denormals())


@pytest.mark.parametrize("flush", [True, False])
def test_a_run_trains_and_evaluates_in_its_mode_and_restores_the_callers(flush):
    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,), seed=0)
    seen = _ModeSeen()
    torch.set_flush_denormal(not flush)
    try:
        fit(model, data, epochs=1, batch_size=400, progress=False, flush_denormal=flush,
            callbacks=[seen])  # fmt: skip
        assert flushes_denormals() == (not flush)
    finally:
        torch.set_flush_denormal(False)
    assert len(seen.seen) > 2 and set(seen.seen) == {flush}


def test_runs_saved_before_the_setting_keep_their_mode_and_new_runs_flush():
    assert FitSettings().flush_denormal is True
    assert FitSettings.from_dict({"epochs": 3}).flush_denormal is False  # an old config.json
    assert FitSettings.from_dict({"flush_denormal": True}).flush_denormal is True
    with pytest.raises(UserError, match="flush_denormal='yes' must be true or false"):
        FitSettings(flush_denormal="yes").validate()


def test_the_cli_sets_the_mode_before_torch_starts_threads(tmp_path):
    """Intra-op threads inherit the mode of the thread that starts them, so the CLI sets
    the run's mode first: a worker thread then flushes as well as the main one."""
    code = (
        "import torch, ppl_ssvae.cli.train as t\n"
        "from ppl_ssvae.training.devices import inherit_denormal_mode\n"
        "seen = []\n"
        "original = t.inherit_denormal_mode\n"
        "def spy(flush):\n"
        "    seen.append(flush); original(flush)\n"
        "t.inherit_denormal_mode = spy\n"
        "from ppl_ssvae.cli import main\n"
        f"main(['train', '--dataset', 'digits', '--labels', '50', '--epochs', '1', '--z-dim', "
        f"'2', '--hidden', '8', '--batch-size', '400', '--no-progress', '--out', r'{tmp_path / 'r'}'])\n"
        "import threading\n"
        "got = []\n"
        "th = threading.Thread(target=lambda: got.append(torch.tensor([1e-40]).item()))\n"
        "th.start(); th.join()\n"
        "print(seen, got)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[True] [0.0]"
