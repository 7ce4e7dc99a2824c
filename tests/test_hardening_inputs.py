"""Inputs that used to end in a traceback (seeds, sizes, data files, divergence): each is
refused in one line before anything is written, or stops like a non-finite loss. CLI
cases run as subprocesses, all at once, to keep the suite fast; then the same rules from
Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.train import FitSettings

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


def _cases(root: Path, trained: Path) -> dict[str, tuple[list[str], str, Path]]:
    """name -> (argv, expected part of the one error line, path that must not change)."""
    fresh = root / "fresh"  # never created by any case
    out = ["--out", str(fresh)]
    active = ["active", "--iterations", "1", "--queries", "2", *out]
    return {
        "seed -1": ([*TRAIN, "--seed", "-1", *out], "seed=-1 must be an integer in [0, 2**32)", fresh),
        "seed 1e20": ([*TRAIN, "--seed", str(10**20), *out], f"seed={10**20} must be", fresh),
        "seed 2**32": ([*TRAIN, "--seed", str(2**32), *out], "seed=4294967296 must be", fresh),
        "active seed -1": ([*active, "--seed", "-1"], "seed=-1 must be an integer in [0, 2**32)", fresh),
    }  # fmt: skip


CASE_NAMES = ["seed -1", "seed 1e20", "seed 2**32", "active seed -1"]


@pytest.fixture(scope="module")
def replayed(trained, tmp_path_factory):
    """Every CLI case run as its own process, all at once."""
    root = tmp_path_factory.mktemp("cases")
    cases = _cases(root, trained)
    before = {name: _snapshot(path) for name, (_, _, path) in cases.items()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "ppl_ssvae.cli", *argv], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _, _) in cases.items()
    }  # fmt: skip
    results = {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in procs.items()}
    return cases, before, results


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_refuses_with_one_line_and_changes_nothing(replayed, case):
    cases, before, results = replayed
    _, expected, path = cases[case]
    code, _, stderr = results[case]
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr, stderr
    assert _snapshot(path) == before[case]


def test_every_case_is_replayed(tmp_path, trained):
    assert sorted(_cases(tmp_path, trained)) == sorted(CASE_NAMES)


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
    from ppl_ssvae.active.loop import _wrapped
    from ppl_ssvae.distributed import rank_seed
    from ppl_ssvae.models import build
    from ppl_ssvae.train import fit

    top = 2**32 - 1
    split = semi_supervised_split(load("digits"), labels=50, seed=top)
    model = build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))
    result = fit(model, split, epochs=1, seed=top, progress=False)
    assert len(result.history) == 1
    assert 0 <= rank_seed(top, 3) < 2**32 and rank_seed(5, 0) == 5
    assert 0 <= _wrapped(top * 1000 + 7) < 2**32 and _wrapped(5 * 1000 + 7) == 5007


# -- evaluate ----------------------------------------------------------------------------------
def test_evaluate_reports_the_same_elbo_on_every_call(trained):
    """Each process starts torch's RNG from a fresh random seed: an unseeded one-sample
    ELBO differs from call to call."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ppl_ssvae.cli", "evaluate", str(trained), "--json"]
    procs = [subprocess.Popen(argv, env=env, cwd=trained.parent, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    reports = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert reports[0]["test_elbo"] == reports[1]["test_elbo"]


def test_seeded_elbo_is_repeatable_and_leaves_the_rng_alone():
    import torch

    from ppl_ssvae.likelihood import seeded_elbo
    from ppl_ssvae.models import build

    model = build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(16,))
    x = semi_supervised_split(load("digits"), labels=50, seed=0).x_test.bernoulli()
    state = torch.get_rng_state()
    first = seeded_elbo(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert seeded_elbo(model, x) == first and seeded_elbo(model, x, seed=1) != first
