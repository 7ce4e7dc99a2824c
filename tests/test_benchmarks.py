"""The speed benchmark compares like with like: its plain-PyTorch run of our modules
optimises exactly the objective that Pyro's TraceEnum_ELBO computes."""

import importlib.util
from pathlib import Path

import pyro
import pytest
import torch

from ppl_ssvae.models import build

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str = "m2_speed"):
    """The script ``benchmarks/NAME.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_factored_loss_equals_the_pyro_loss_with_the_same_noise(float64):
    factored_loss = _benchmark().factored_loss
    model = build("m2", input_dim=20, num_classes=4, z_dim=3, hidden=(8,), alpha=7.0)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, 20))
    y = torch.tensor([-1, 2, -1, 0, -1, -1])
    pyro.set_rng_seed(5)
    ours = factored_loss(model, x, y)
    pyro.set_rng_seed(5)
    expected = model.make_elbo().differentiable_loss(model.model, model.guide, x, y)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-10)


def test_precision_benchmark_times_both_precisions_of_every_model(monkeypatch):
    """Every model of the table steps under both precisions, timed step by step
    (sizes shrunk so the test is quick; the script runs the experiments' sizes)."""
    module = _benchmark("precision_speed")
    small = {
        name: (model, {**config, **({"z_dim": 3, "hidden": (8,)} if "hidden" in config else {})},
               6, 3, classes)
        for name, (model, config, _, _, classes) in module.SETUPS.items()
    }  # fmt: skip
    monkeypatch.setattr(module, "SETUPS", small)
    for name in small:
        times = module.step_times(name, steps=2)
        assert set(times) == {"fp32", "bf16"}
        assert all(len(t) == 2 and min(t) > 0 for t in times.values()), name


def test_guide_benchmark_times_every_guide_it_is_given():
    module = _benchmark("guide_speed")
    ratios = module.main(["--guides", "gaussian,maf,pyro-iaf@100", "--steps", "2"])
    assert set(ratios) == {"gaussian", "maf", "pyro-iaf@100"} and ratios["gaussian"] == 1.0
    assert ratios["maf"] > 0 and ratios["pyro-iaf@100"] > 0
    with pytest.raises(SystemExit):
        module.main(["--guides", "gaussian,maf@wide"])


def test_guide_profile_names_operators_whose_shares_are_of_the_whole_step():
    module = _benchmark("guide_speed")
    step, data = module.stepper("nsf"), module.batches(1)
    every = module.costliest_operators(step, data, steps=1, top=10_000)
    assert sum(share for _, share in every) == pytest.approx(1.0)
    top = module.costliest_operators(step, data, steps=1, top=3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] > 0
    assert "aten::_softmax" in dict(every)  # the spline's bins


def test_net_benchmark_times_every_net_it_is_given():
    module = _benchmark("net_speed")
    ratios = module.main(["--nets", "dense,conv@4x8,m1-m2/m1,m1-m2/m2", "--steps", "1"])
    assert set(ratios) == {"dense", "conv@4x8", "m1-m2/m1", "m1-m2/m2"}
    assert ratios["dense"] == 1.0 and min(ratios.values()) > 0
    for bad in ("dense,conv@wide", "dense,resnet"):
        with pytest.raises(SystemExit):
            module.main(["--nets", bad])


def test_denormal_benchmark_times_a_runs_step_in_both_modes(tmp_path):
    from ppl_ssvae.cli import main

    out = str(tmp_path / "run")
    tiny = ["--dataset", "digits", "--labels", "50", "--z-dim", "3", "--hidden", "8",
            "--batch-size", "400", "--epochs", "1", "--no-progress", "--out", out]  # fmt: skip
    assert main(["train", *tiny]) == 0
    module = _benchmark("denormal_speed")
    times = module.step_times(out, steps=2)
    assert set(times) == {"keep subnormals", "flush to zero"}
    assert all(len(t) == 2 and min(t) > 0 for t in times.values())
    threads = torch.get_num_threads()
    try:  # main() runs on one thread, as a script does; later tests keep this process's
        assert module.main([out, "--steps", "1"]) > 0
    finally:
        torch.set_num_threads(threads)
