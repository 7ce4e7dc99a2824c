"""Inputs that used to end in a traceback (seeds, sizes, data files, divergence): each is
refused in one line before anything is written, or stops like a non-finite loss. CLI
cases run as subprocesses, all at once, to keep the suite fast; then the same rules from
Python."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split, write_idx
from ppl_ssvae.errors import UserError
from ppl_ssvae.training import FitSettings

TINY = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
        "--batch-size", "200", "--no-progress"]  # fmt: skip
TRAIN = ["train", *TINY, "--epochs", "1"]


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch CLI run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def _gzip_bomb(path: Path, shape: tuple[int, ...], gigabytes: float) -> None:
    """An IDX file whose header is honest about ``shape`` (uint8) but whose gzip stream
    goes on with ``gigabytes`` of zeros, in members of 64 MB (~64 kB compressed each)."""
    header = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    first = gzip.compress(header + bytes(math.prod(shape)), 1)
    member = gzip.compress(bytes(64 << 20), 9)
    path.write_bytes(first + member * round(gigabytes * 16))


def _bomb_dir(root: Path) -> Path:
    """MNIST files in a --data-dir whose training images are a 4 GB gzip bomb (4 MB)."""
    directory = root / "bomb"
    directory.mkdir()
    images, labels = np.zeros((20, 28, 28), np.uint8), np.zeros(20, np.uint8)
    for stem, array in (("train-labels-idx1-ubyte", labels), ("t10k-images-idx3-ubyte", images),
                        ("t10k-labels-idx1-ubyte", labels)):  # fmt: skip
        write_idx(directory / f"{stem}.gz", array)
    _gzip_bomb(directory / "train-images-idx3-ubyte.gz", (20, 28, 28), 4)
    return directory


def _crafted_config(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = [2_000_000_000]
    (run / "config.json").write_text(json.dumps(config))


# Cases under PPL_SSVAE_MEMORY_LIMIT: digits caps a batch at its 1257 training rows, 31 MB
# by the estimate (5 MB for batch 200); the evaluation after an epoch needs 12 MB.
ENV = {"batch-size": {"PPL_SSVAE_MEMORY_LIMIT": "20M"},
       "evaluate memory": {"PPL_SSVAE_MEMORY_LIMIT": "5M"}}  # fmt: skip
# Every case runs in 3 GB of address space: a reader that decompresses the whole gzip bomb
# runs out of it, and so does any model the size checks should have refused.
ADDRESS_SPACE = 3 << 30


def _cases(root: Path, trained: Path) -> dict[str, tuple[list[str], str, Path]]:
    """name -> (argv, expected part of the one error line, path that must not change)."""
    fresh = root / "fresh"  # never created by any case
    out = ["--out", str(fresh)]
    active = ["active", "--iterations", "1", "--queries", "2", *out]

    def copy(name: str, edit=lambda run: None) -> Path:  # each case its own run
        shutil.copytree(trained, root / name)
        edit(root / name)
        return root / name

    return {
        "seed -1": ([*TRAIN, "--seed", "-1", *out], "seed=-1 must be an integer in [0, 2**32)", fresh),
        "seed 1e20": ([*TRAIN, "--seed", str(10**20), *out], f"seed={10**20} must be", fresh),
        "seed 2**32": ([*TRAIN, "--seed", str(2**32), *out], "seed=4294967296 must be", fresh),
        "active seed -1": ([*active, "--seed", "-1"], "seed=-1 must be an integer in [0, 2**32)", fresh),
        "hidden": ([*TRAIN, "--hidden", "2000000000", *out], "hidden=[2000000000]) with", fresh),
        "z-dim": ([*TRAIN, "--z-dim", "2000000000", *out], "z_dim=2000000000", fresh),
        "extra-classes": ([*TRAIN, "--extra-classes", "2000000000", *out], "num_classes=2000000010", fresh),
        "num-particles": ([*TRAIN, "--num-particles", "1000000000", *out], "num_particles=1000000000", fresh),
        "batch-size": ([*TRAIN, "--batch-size", "100000", *out], "batch_size=100000: 1257 rows", fresh),
        "config.json hidden": (["evaluate", str(v := copy("crafted", _crafted_config))],
                               "hidden=[2000000000]) with", v),  # fmt: skip
        "evaluate memory": (["evaluate", str(v := copy("small"))],
                            "one evaluation pass (10000 rows x 214 numbers per row)", v),  # fmt: skip
        "inspect num-samples": (["inspect", str(trained), *out, "--num-samples", "1000000000"],
                                "num_samples=1000000000 draws needs about", fresh),  # fmt: skip
        "iwae": (["evaluate", str(v := copy("iwae")), "--iwae", "1000000000"],
                 "over its budget of 60 minutes", v),  # fmt: skip
        "iwae-max-minutes 0": (["evaluate", str(v := copy("iwae0")), "--iwae", "5",
                                "--iwae-max-minutes", "0"], "--iwae-max-minutes 0.0 must be", v),  # fmt: skip
        "gzip bomb": (["train", "--dataset", "mnist", "--data-dir", str(_bomb_dir(root)),
                       "--no-progress", *out], "(15680 bytes) but more bytes follow", fresh),  # fmt: skip
    }  # fmt: skip


CASE_NAMES = [
    "seed -1", "seed 1e20", "seed 2**32", "active seed -1", "hidden", "z-dim", "extra-classes",
    "num-particles", "batch-size", "config.json hidden", "evaluate memory",
    "inspect num-samples", "iwae", "iwae-max-minutes 0", "gzip bomb",
]  # fmt: skip


# Runs CLI commands one after another in one process, as `python -m ppl_ssvae.cli` would
# (exit code, stdout, stderr, a traceback if one escapes), so the imports are paid once.
DRIVER = """
import contextlib, io, json, os, sys, traceback
from ppl_ssvae.cli import main
results = {}
for name, (argv, env) in json.loads(open(sys.argv[1]).read()).items():
    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    os.environ.update(env)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
    os.environ.clear()
    os.environ.update(saved)
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def _run_all(root: Path, argvs: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """Every command, in two processes (one per core) of ADDRESS_SPACE bytes each: name ->
    (exit code, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))  # noqa: E731
    names, procs = sorted(argvs), []
    for half in range(2):
        commands = root / f"commands-{half}.json"
        commands.write_text(json.dumps({n: (argvs[n], ENV.get(n, {})) for n in names[half::2]}))
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(commands)], cwd=root,
                                      env=env, preexec_fn=limit, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = {}
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, (proc.returncode, err[-3000:])  # the driver itself
            results |= json.loads(out)
    finally:
        for proc in procs:
            proc.kill()
    return {name: tuple(result) for name, result in results.items()}


@pytest.fixture(scope="module")
def replayed(trained, tmp_path_factory):
    """Every CLI case, the two diverging trainings and two evaluations, run at once."""
    root = tmp_path_factory.mktemp("cases")
    cases = _cases(root, trained)
    before = {name: _snapshot(path) for name, (_, _, path) in cases.items()}
    diverging = {name: ["train", "--dataset", "digits", "--epochs", "3", "--no-progress", "--lr",
                        lr, "--out", str(root / name)] for name, lr in DIVERGING.items()}  # fmt: skip
    evaluations = {
        name: ["evaluate", str(trained), "--json"] for name in ("evaluate a", "evaluate b")
    }
    argvs = {name: argv for name, (argv, _, _) in cases.items()}
    results = _run_all(root, {**argvs, **diverging, **evaluations})
    return root, cases, before, results


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_refuses_with_one_line_and_changes_nothing(replayed, case):
    _, cases, before, results = replayed
    _, expected, path = cases[case]
    code, _, stderr = results[case]
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr, stderr
    assert _snapshot(path) == before[case]


def test_every_case_is_replayed(tmp_path, trained):
    assert sorted(_cases(tmp_path, trained)) == sorted(CASE_NAMES)


# lr 1e30 keeps the weights finite but overflows the activations (Pyro's validation of a
# distribution's parameters used to escape as a 537-line traceback); lr 1e6 used to finish
# 3 epochs with exit 0 and a loss of 1.6e29 per row.
DIVERGING = {"lr 1e30": "1e30", "lr 1e6": "1e6"}


@pytest.mark.parametrize(("case", "expected"), [("lr 1e30", "non-finite"), ("lr 1e6", "diverged")])
def test_a_diverging_run_stops_in_one_line_like_a_non_finite_loss(replayed, case, expected):
    root, _, _, results = replayed
    code, _, stderr = results[case]
    assert "Traceback" not in stderr and code == 1, (code, stderr)
    assert len(stderr.strip().splitlines()) == 1 and expected in stderr, stderr
    assert "no checkpoint was written" in stderr  # both go wrong within the first epoch
    assert not (root / case / "checkpoint.pt").exists()


# -- seeds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**32, 10**20, 1e20, 3.0, True, "1"])
def test_check_seed_refuses_what_numpy_and_torch_cannot_take(seed):
    from ppl_ssvae.errors import check_seed

    with pytest.raises(UserError, match=r"my_seed=.* must be an integer in \[0, 2\*\*32\)"):
        check_seed(seed, "my_seed")


def test_check_seed_passes_the_32_bit_range():
    from ppl_ssvae.errors import check_seed

    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1


@pytest.mark.parametrize("seed", [-1, 10**20, 1e20])
def test_library_entry_points_refuse_a_bad_seed(seed):
    from ppl_ssvae.active import ActiveConfig
    from ppl_ssvae.protocol import build_for_data

    digits = load("digits")
    with pytest.raises(UserError, match="seed="):
        semi_supervised_split(digits, labels=50, seed=seed)
    with pytest.raises(UserError, match="seed="):
        FitSettings(seed=seed).validate()
    with pytest.raises(UserError, match="seed="):
        ActiveConfig(seed=seed).validate()
    split = semi_supervised_split(digits, labels=50, seed=0)
    with pytest.raises(UserError, match="seed="):
        build_for_data("m2", split, seed=seed)


def test_the_largest_seed_trains_and_derived_seeds_stay_32_bit():
    from ppl_ssvae.active.config import wrapped_seed
    from ppl_ssvae.models import build
    from ppl_ssvae.training import fit
    from ppl_ssvae.training.distributed import rank_seed

    top = 2**32 - 1
    split = semi_supervised_split(load("digits"), labels=50, seed=top)
    model = build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))
    result = fit(model, split, epochs=1, seed=top, progress=False)
    assert len(result.history) == 1
    assert 0 <= rank_seed(top, 3) < 2**32 and rank_seed(5, 0) == 5
    assert 0 <= wrapped_seed(top * 1000 + 7) < 2**32 and wrapped_seed(5 * 1000 + 7) == 5007


# -- evaluate ----------------------------------------------------------------------------------
def test_evaluate_reports_the_same_elbo_on_every_call(replayed):
    """Each call comes after other commands or in another process, with torch's RNG
    elsewhere: an unseeded one-sample ELBO differs from call to call."""
    results = replayed[3]
    reports = [json.loads(results[name][1]) for name in ("evaluate a", "evaluate b")]
    assert reports[0]["test_elbo"] == reports[1]["test_elbo"]


def test_seeded_elbo_is_repeatable_and_leaves_the_rng_alone():
    import torch

    from ppl_ssvae.evaluation.likelihood import seeded_elbo
    from ppl_ssvae.models import build

    model = build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))
    x = semi_supervised_split(load("digits"), labels=50, seed=0).x_test.bernoulli()
    state = torch.get_rng_state()
    first = seeded_elbo(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert seeded_elbo(model, x) == first and seeded_elbo(model, x, seed=1) != first


# -- sizes -------------------------------------------------------------------------------------
def _tiny_model():
    from ppl_ssvae.models import build

    return build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [("m2", {"hidden": (2_000_000_000,)}, "hidden=[2000000000]"),
     ("m2", {"guide": "maf", "hidden": (2_000_000_000,)}, "hidden=[2000000000]"),  # no meta build
     ("gmdgm", {"z_dim": 2_000_000_000}, "z_dim=2000000000"),
     ("adgm", {"num_classes": 2_000_000_000}, "num_classes=2000000000")],
)  # fmt: skip
def test_a_model_too_big_for_memory_is_refused_before_allocating(name, options, named):
    from ppl_ssvae.models import build, from_config

    with pytest.raises(UserError, match=rf"{re.escape(named)}.* needs about .* TB of memory but"):
        build(name, **{"input_dim": 784, "num_classes": 10, **options})
    config = {**_tiny_model().to_config(), "hidden": [2_000_000_000]}
    with pytest.raises(UserError, match=r"hidden=\[2000000000\]\) with .* weights needs about"):
        from_config(config)


def test_the_size_check_leaves_the_initial_weights_as_they_were():
    from ppl_ssvae.models import M2, build

    torch.manual_seed(3)
    built = build("m2", guide="maf", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))
    torch.manual_seed(3)
    direct = M2(M2.config_class.from_dict({"input_dim": 64, "num_classes": 10, "z_dim": 4,
                                           "hidden": (16,), "guide": "maf"}))  # fmt: skip
    pairs = zip(built.state_dict().values(), direct.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_model_with_a_class_prior_is_measured_and_one_that_cannot_be_is_said_so():
    from ppl_ssvae.memory import MemoryCheckWarning, meta_build
    from ppl_ssvae.models import build

    with pytest.raises(UserError, match=r"hidden=\[2000000000\]"):  # its prior read on the CPU
        build("adgm", input_dim=12, num_classes=3, hidden=(2_000_000_000,), prior=(0.5, 0.3, 0.2))

    def computes() -> torch.nn.Module:
        torch.zeros(3).sum().item()  # data-dependent: impossible on the meta device
        return torch.nn.Linear(2, 2)

    with pytest.warns(MemoryCheckWarning, match="built unchecked"):
        assert meta_build(computes, computes) is None


def test_paper_size_runs_pass_the_memory_checks_in_4_gb(monkeypatch):
    """M2 on Fashion-MNIST (hidden 500, batch 200) and GM-DGM at Willetts et al.'s size
    (hidden 500,500, 10 + 40 extra classes, 2 particles) fit well within 4 GB."""
    from ppl_ssvae.memory import check_fit_memory
    from ppl_ssvae.models import build

    monkeypatch.setenv("PPL_SSVAE_MEMORY_LIMIT", "4G")
    cpu = torch.device("cpu")
    m2 = build("m2", input_dim=784, num_classes=10, hidden=(500,))
    check_fit_memory(m2, 784, 10, (200, 200), 1, cpu)
    gmdgm = build("gmdgm", input_dim=784, num_classes=50, hidden=(500, 500))
    check_fit_memory(gmdgm, 784, 50, (200, 200), 2, cpu)
    with pytest.raises(UserError, match=r"one training step \(batch_size=60000: 60000 rows x"):
        check_fit_memory(m2, 784, 10, (60000, 60000), 1, cpu)


@pytest.mark.parametrize(("text", "limit"), [("8G", 8 << 30), ("512m", 512 << 20), ("1000", 1000),
                                             ("1.5GB", 3 << 29)])  # fmt: skip
def test_the_memory_limit_of_the_environment(monkeypatch, text, limit):
    from ppl_ssvae import memory

    monkeypatch.setattr(memory, "_meminfo_available", lambda: 1 << 50)
    monkeypatch.setenv("PPL_SSVAE_MEMORY_LIMIT", text)
    assert memory.available_bytes() == min(limit, memory._cgroup_available())
    monkeypatch.setenv("PPL_SSVAE_MEMORY_LIMIT", "lots")
    with pytest.raises(UserError, match="PPL_SSVAE_MEMORY_LIMIT='lots' must be a size"):
        memory.available_bytes()


def test_a_posterior_too_big_for_memory_is_refused_before_drawing(monkeypatch):
    """Under a 1 MB limit, so that without the check the draws (20 MB) just happen."""
    from ppl_ssvae.evaluation.inspect import posterior

    monkeypatch.setenv("PPL_SSVAE_MEMORY_LIMIT", "1M")
    x = torch.rand(4, 64)
    with pytest.raises(UserError, match=r"4 rows x num_samples=5000 draws needs about 20\.1 MB"):
        posterior(_tiny_model(), x, num_samples=5000)


# -- IWAE time -----------------------------------------------------------------------------------
def test_an_iwae_estimate_over_its_time_budget_is_refused_after_one_pass():
    from ppl_ssvae.evaluation.likelihood import log_likelihood

    x = torch.rand(5, 64).bernoulli()
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"would take 350 passes x .* s \(the first, measured\) "
                       r"= about .*, over its budget of 0.001 minutes"):  # fmt: skip
        log_likelihood(_tiny_model(), x, num_samples=100_000, max_minutes=0.001)
    assert time.perf_counter() - started < 5  # one pass, not 350


def test_an_iwae_estimate_says_how_long_it_takes(capsys, monkeypatch):
    from ppl_ssvae.evaluation.likelihood import PassClock, log_likelihood

    monkeypatch.setattr(PassClock, "say_after", 0.0)  # said from 10 s on; this one is quick

    x = torch.rand(6, 64).bernoulli()
    model = _tiny_model()
    shown = log_likelihood(model, x, num_samples=300, max_rows=500, progress=True)
    said = capsys.readouterr().err
    assert "the IWAE estimate (K=300, 6 rows): 60 passes x" in said and "= about" in said
    assert torch.equal(shown, log_likelihood(model, x, num_samples=300, max_rows=500))


# -- data files --------------------------------------------------------------------------------
def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    from ppl_ssvae.data import read_idx
    from ppl_ssvae.errors import DataNotFoundError

    bomb = tmp_path / "bomb.gz"
    _gzip_bomb(bomb, (5, 28, 28), 1)  # 1 GB behind a 3920-byte header
    started = time.process_time()
    with pytest.raises(DataNotFoundError, match=r"\(3920 bytes\) but more bytes follow"):
        read_idx(bomb)
    assert time.process_time() - started < 0.5  # a full decompression takes seconds


def test_a_header_claiming_more_than_the_file_can_hold_is_refused_before_allocating(tmp_path):
    from ppl_ssvae.data import read_idx
    from ppl_ssvae.errors import DataNotFoundError

    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10**6, 28, 28)
    (tmp_path / "big.gz").write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(DataNotFoundError, match="gzip file decompresses to at most"):
        read_idx(tmp_path / "big.gz")
    (tmp_path / "big").write_bytes(header + bytes(100))
    with pytest.raises(DataNotFoundError, match=r"\(784000000 bytes\) but 100 follow"):
        read_idx(tmp_path / "big")


# -- divergence --------------------------------------------------------------------------------
def test_the_divergence_guard():
    from ppl_ssvae.training.divergence import DivergenceGuard

    guard = DivergenceGuard(factor=100.0)
    assert guard.check(-50.0) is None and guard.start == 50.0  # the first step sets the scale
    assert guard.check(5000.0) is None and guard.check(float("nan")) is None
    assert "diverged to 5e+03 per row, over divergence_factor=100 times its start (50)" in (
        guard.check(5000.1) or ""
    )
    off = DivergenceGuard(factor=None)
    assert off.check(1.0) is None and off.check(1e30) is None
    tiny = DivergenceGuard(factor=10.0)
    tiny.check(1e-3)
    assert tiny.start == 1.0 and tiny.check(10.5)  # a loss starting near 0 still has a scale


def _gaussian_digits():
    from ppl_ssvae.models import build

    split = semi_supervised_split(load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,),
                  likelihood="gaussian")  # fmt: skip
    return model, split


def test_a_loss_that_explodes_after_a_good_epoch_keeps_that_epochs_checkpoint(tmp_path):
    """Resumed on data scaled by 1e4, the loss jumps past 1e4 times the start recorded in
    the checkpoint: stopped at the first step, checkpoint of epoch 1 untouched."""
    from ppl_ssvae.errors import DivergenceError
    from ppl_ssvae.training import fit

    model, split = _gaussian_digits()
    fit(model, split, epochs=1, out=tmp_path / "run", progress=False, seed=0)
    kept = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    scaled = dataclasses.replace(split, x_train=split.x_train * 1e4)
    with pytest.raises(DivergenceError, match=r"diverged to .* at epoch 2, step 1; training "
                       r"stopped, the last good checkpoint is .*checkpoint.pt \(epoch 1\)"):  # fmt: skip
        fit(model, scaled, epochs=2, out=tmp_path / "run", resume=True, progress=False, seed=0)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == kept


def test_a_validation_error_in_the_evaluation_is_a_non_finite_stop_and_others_are_not():
    from ppl_ssvae.errors import NonFiniteLossError
    from ppl_ssvae.training import fit

    model, split = _gaussian_digits()

    def overflowed(model, data):
        raise ValueError("Expected parameter loc (Tensor of shape (2,)) of distribution ...")

    with pytest.raises(NonFiniteLossError, match="outputs became non-finite at epoch 1, the ev"):
        fit(model, split, epochs=1, evaluate=overflowed, progress=False)

    def broken(model, data):
        raise ValueError("a bug, not a divergence")

    with pytest.raises(ValueError, match="a bug, not a divergence"):
        fit(model, split, epochs=1, evaluate=broken, progress=False)


def test_divergence_factor_is_checked_and_old_runs_without_it_resume(trained, tmp_path):
    with pytest.raises(UserError, match=r"divergence_factor=1 must be a finite number > 1"):
        FitSettings(divergence_factor=1).validate()
    FitSettings(divergence_factor=None).validate()
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    config = json.loads((old / "config.json").read_text())
    del config["fit"]["divergence_factor"], config["spec"]["fit"]["divergence_factor"]
    (old / "config.json").write_text(json.dumps(config))
    assert FitSettings.from_dict(config["fit"]).divergence_factor == 1e4
    assert main(["train", "--out", str(old), "--resume", "--epochs", "2", "--no-progress"]) == 0
