"""Every experiment script runs end to end on a small budget (cf. Pyro's test_examples)."""

import importlib
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# Each script with the arguments that make it quick; a script missing here fails the test.
SMOKE_ARGS = {
    "m2_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--labels", "100"],
}


def test_every_experiment_is_listed():
    scripts = {p.stem for p in EXPERIMENTS.glob("*.py")} - {"__init__", "common"}
    assert scripts == set(SMOKE_ARGS)


@pytest.mark.parametrize("name", sorted(SMOKE_ARGS))
def test_experiment_smoke(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    out = module.main([*SMOKE_ARGS[name], "--results-dir", str(tmp_path)])
    assert {"results.md", "results.csv", "config.json"} <= {p.name for p in out.iterdir()}
    assert "test_accuracy" in (out / "results.md").read_text()
