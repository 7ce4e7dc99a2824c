"""``ppl-ssvae inspect`` on a run of every registered model: pictures that apply are
written, those that do not say why, and nothing ends in a traceback."""

from __future__ import annotations

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.models import MODELS

TINY = ["--dataset", "digits", "--labels", "50", "--z-dim", "2", "--hidden", "8",
        "--epochs", "1", "--batch-size", "400", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inspect_runs_on_every_registered_model(name, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "inspect"
    assert main(["train", "--model", name, *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run), "--out", str(out), "--rows", "4", "--num-samples", "5"]) == 0
    printed = capsys.readouterr().out
    assert "posterior" in printed and (out / "posterior.nc").is_file(), printed
    assert any(p.suffix == ".png" for p in out.iterdir()), printed
