"""Data-parallel training (ppl_ssvae.training.distributed) against one process, on gloo/CPU.

Ranks are real processes (torch.multiprocessing, one thread each) joined through a file
store over loopback; the CLI tests launch ``torchrun`` itself. Ranks start in fresh
interpreters: a fork of pytest's process inherits whatever locks its threads (OpenMP's
pool, tqdm's monitor) held at that instant, and one CI run hung there for its whole budget.
A rank that is still running after ``RANK_DEADLINE_S`` prints its stack and exits, so a
hang fails its test instead of the suite.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppl_ssvae.data import SemiSupervisedBatches, load_recipe
from ppl_ssvae.models import MODELS, build
from ppl_ssvae.protocol import evaluators
from ppl_ssvae.runs.directory import CHECKPOINT, RunDir
from ppl_ssvae.training import distributed, fit
from ppl_ssvae.training.distributed import DataParallelSteps

WORLD = 2
RANK_DEADLINE_S = 240
D, K = 10, 3
# Every model with its default guide, and flows from both libraries.
CASES = [(name, "gaussian") for name in sorted(MODELS)] + [("m2", "maf"), ("adgm", "pyro-iaf")]


# -- helpers run inside each rank -----------------------------------------------------------
def _join(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    distributed.use_loopback()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=RANK_DEADLINE_S // 2))  # fmt: skip


def _rank(rank: int, worker, *args) -> None:
    faulthandler.dump_traceback_later(RANK_DEADLINE_S, exit=True)
    worker(rank, *args)
    # As python -m ppl_ssvae does for a data-parallel run's ranks: a finished rank leaves
    # without the interpreter's teardown, where gloo's threads can abort it ("terminate
    # called without an active exception", seen in CI on this test file).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(worker, *args) -> None:
    ranks = mp.start_processes(_rank, args=(worker, *args), nprocs=WORLD, join=False,
                               start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + RANK_DEADLINE_S + 30
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks of {worker.__name__} were still running after the deadline")


@contextlib.contextmanager
def fixed_noise():
    """Reparameterised Normal draws whose noise is a fixed function of the row (its own
    location and scale), so one row gets the same z on any rank and in any batch."""
    original = torch.distributions.Normal.rsample

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        # Smooth in (loc, scale), so rounding differences of batches of other sizes stay
        # rounding differences.
        eps = torch.sin(5.0 * self.loc.detach() + 3.0 * self.scale.detach()).expand(shape)
        return self.loc.expand(shape) + eps * self.scale.expand(shape)

    torch.distributions.Normal.rsample = rsample
    try:
        yield
    finally:
        torch.distributions.Normal.rsample = original


def _case(name: str, guide: str):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    options = {"guide": guide} if MODELS[name].guide_latents else {}
    if name == "m1-m2":  # its M2's layers are sized apart from M1's (`hidden`)
        options["m2_hidden"] = (8,)
    model = build(name, input_dim=D, num_classes=K, z_dim=2, hidden=(8,), **options)
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((16, D), 0.4), generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2] + [-1] * 10)
    if name == "beta-vae-classifier":  # (label, weight) rows
        y = torch.stack([y.float(), torch.where(y >= 0, 0.7, 0.0)], -1)
    return model, x, y


class _RecordThenSGD:
    """An optimizer that keeps each parameter's gradient, then takes an SGD step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def __call__(self, params) -> None:
        store = pyro.get_param_store()
        for p in params:
            self.grads[store.param_name(p)] = p.grad.detach().clone()
            p.data -= 0.1 * p.grad
            p.grad = None


def _one_step_worker(rank: int, store: str, out: str) -> None:
    _join(rank, store)
    group = distributed.current()
    results = {}
    with fixed_noise():
        for name, guide in CASES:
            model, x, y = _case(name, guide)
            batches = SemiSupervisedBatches(x, y, batch_size=16, shard=(rank, WORLD))
            (xs, ys), *_ = batches.epoch(1)
            optim = _RecordThenSGD()
            steps = DataParallelSteps(model, model.make_elbo(), optim, group)
            loss = steps.step(xs, ys)
            results[f"{name}/{guide}"] = {
                "loss": loss, "grads": optim.grads, "state": model.state_dict(), "rows": len(xs)
            }  # fmt: skip
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _single_process_step(name: str, guide: str):
    model, x, y = _case(name, guide)
    (xg, yg), *_ = SemiSupervisedBatches(x, y, batch_size=16).epoch(1)
    loss = model.make_elbo().differentiable_loss(model.model, model.guide, xg, yg)
    loss.backward()
    optim = _RecordThenSGD()
    optim([p for p in model.parameters() if p.grad is not None])
    return loss.item(), optim.grads, model.state_dict()


def test_one_step_on_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "ranks.pt"
    _spawn(_one_step_worker, str(tmp_path / "store"), str(out))
    ranks = torch.load(out, weights_only=False)
    with fixed_noise():
        for name, guide in CASES:
            got = ranks[f"{name}/{guide}"]
            loss, grads, state = _single_process_step(name, guide)
            assert got["rows"] == 8  # half of each part: 3 labelled + 5 unlabelled
            assert got["loss"] == pytest.approx(loss, rel=1e-5), name
            assert sorted(got["grads"]) == sorted(grads), name
            for key, grad in grads.items():
                torch.testing.assert_close(got["grads"][key], grad, rtol=1e-4, atol=1e-6)
            for key, value in state.items():
                torch.testing.assert_close(got["state"][key], value, rtol=1e-4, atol=1e-6)


def test_rank_shards_are_the_single_process_batches_split_by_part():
    x = torch.rand(50, 4)
    y = torch.tensor([0, 1] * 5 + [-1] * 40)
    whole = SemiSupervisedBatches(x, y, 20, "1:1", True, seed=3)
    shards = [SemiSupervisedBatches(x, y, 20, "1:1", True, seed=3, shard=(r, 3)) for r in range(3)]
    for epoch in (1, 2):
        for (xg, yg), *parts in zip(
            whole.epoch(epoch), *(s.epoch(epoch) for s in shards), strict=True
        ):
            labelled = torch.cat([py[py >= 0] for _, py in parts])
            assert sorted(labelled.tolist()) == sorted(yg[yg >= 0].tolist())
            # every rank gets its part of each stream (the share holds per rank) and the
            # binarised pixels are the single-process draws of the same rows
            assert all(abs(int((py >= 0).sum()) - int((yg >= 0).sum()) / 3) < 1 for _, py in parts)
            assert torch.equal(torch.cat([px for px, _ in parts]).sum(0), xg.sum(0))
            assert sum(len(px) for px, _ in parts) == len(xg)


def test_use_loopback_picks_a_loopback_interface_and_keeps_a_users_choice(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    distributed.use_loopback()
    chosen = os.environ["GLOO_SOCKET_IFNAME"]
    assert chosen.startswith("lo") and chosen in {name for _, name in socket.if_nameindex()}
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    distributed.use_loopback()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"


# -- fit on two ranks ---------------------------------------------------------------------------
def _digits(labels: int = 100):
    return load_recipe({"dataset": "digits", "labels": labels, "seed": 0})


def _digits_m2():
    pyro.set_rng_seed(0)
    return build("m2", input_dim=64, num_classes=10, z_dim=4, hidden=(32,))


def _fit_worker(rank: int, store: str, run: str, out: str) -> None:
    _join(rank, store)
    if rank != 0:
        # Rank-0-only writes: any run-directory write from another rank fails the run.
        def refuse(*_a, **_k):
            raise AssertionError(f"rank {rank} wrote to the run directory")

        for method in ("write_config", "write_history", "save_checkpoint", "start", "lock"):
            setattr(RunDir, method, refuse)
    split = _digits()
    model = _digits_m2()
    result = fit(model, split, epochs=3, batch_size=50, labelled_share="1:1", out=run,
                 progress=False, device="cpu")  # fmt: skip
    if rank == 0:
        torch.save(result.history, out)
    else:
        assert result.history == []  # rank 0 keeps the record
    dist.destroy_process_group()


def test_three_epochs_on_two_ranks_end_near_one_process_and_only_rank_0_writes(tmp_path):
    run = tmp_path / "run"
    _spawn(_fit_worker, str(tmp_path / "store"), str(run), str(tmp_path / "h.pt"))
    ranks = torch.load(tmp_path / "h.pt", weights_only=False)
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 100}
    assert len(RunDir(run).load_checkpoint(CHECKPOINT)["rng_ranks"]) == 2
    model = _digits_m2()
    one = fit(model, _digits(), epochs=3, batch_size=100, labelled_share="1:1",
              progress=False, device="cpu").history  # fmt: skip
    # Same batches and weights at the start; only the z noise of rank 1's rows differs.
    for a, b in zip(ranks, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)
        assert a["elbo"] == pytest.approx(b["elbo"], rel=0.02)
    assert abs(ranks[-1]["val_accuracy"] - one[-1]["val_accuracy"]) < 0.1
    assert ranks[0]["train_loss"] > ranks[-1]["train_loss"]
    # Rank 0's metrics are what one process reports for the same weights.
    again = _digits_m2()
    RunDir(run).load_weights(again, CHECKPOINT)
    report = evaluators()["classification"](again, _digits())
    assert report["test_accuracy"] == ranks[-1]["test_accuracy"]
    assert report["val_accuracy"] == ranks[-1]["val_accuracy"]


def _non_finite_worker(rank: int, store: str, run: str, out: str) -> None:
    from ppl_ssvae.errors import NonFiniteLossError
    from ppl_ssvae.training.distributed import _Objective

    _join(rank, store)
    split = _digits()
    # Rank 1 alone goes non-finite in the middle of epoch 3.
    poison_after = len(SemiSupervisedBatches(split.x_train, split.y_train, 100)) * 2 + 3
    calls = {"n": 0}
    forward = _Objective.forward

    def poisoned(self, x, y):
        calls["n"] += 1
        loss = forward(self, x, y)
        return loss * math.inf if rank == 1 and calls["n"] > poison_after else loss

    _Objective.forward = poisoned
    model = _digits_m2()
    try:
        fit(model, split, epochs=6, batch_size=50, out=run, progress=False, device="cpu")
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = str(e)
    torch.save(outcome, f"{out}.{rank}")
    dist.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_checkpoint_intact(tmp_path):
    run = tmp_path / "run"
    _spawn(_non_finite_worker, str(tmp_path / "store"), str(run), str(tmp_path / "outcome"))
    outcomes = [torch.load(f"{tmp_path / 'outcome'}.{r}", weights_only=False) for r in (0, 1)]
    assert all("became non-finite" in o for o in outcomes), outcomes
    state = RunDir(run).load_checkpoint(CHECKPOINT)  # verifies its SHA-256
    assert state["epoch"] == 2
    assert "at epoch 3, step 4" in outcomes[0] and "(epoch 2)" in outcomes[0], outcomes[0]


# -- the CLI under torchrun ----------------------------------------------------------------------
TRAIN = ["train", "--model", "m2", "--dataset", "digits", "--labels", "100", "--z-dim", "4",
         "--hidden", "32", "--batch-size", "25", "--device", "cpu", "--no-progress"]  # fmt: skip


def _cli(*args: str, devices: int = WORLD, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["--devices", str(devices)] if devices > 1 else []
    return subprocess.run([sys.executable, "-m", "ppl_ssvae", *args, *launcher], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return RunDir(run).load_checkpoint(CHECKPOINT)["model"]


def test_cli_resume_after_a_rank_is_killed_continues_to_the_uninterrupted_result(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "ppl_ssvae", *TRAIN, "--epochs", "200", "--out", str(killed),
         "--devices", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _epochs_in(killed) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks = _children_with(launcher.pid, "ppl_ssvae")
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 1
    # One line says which rank died and what the run directory keeps; no tracebacks.
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert re.search(r"rank \d was killed by signal 9, so every rank stopped; .* keeps the "
                     r"checkpoint of epoch \d+", stderr), stderr  # fmt: skip
    trained = int(RunDir(killed).load_checkpoint(CHECKPOINT)["epoch"])  # intact: verifies
    assert 2 <= trained < 200
    target = str(trained + 2)
    resumed = _cli(*TRAIN, "--epochs", target, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = _cli(*TRAIN, "--epochs", target, "--out", str(whole))
    assert straight.returncode == 0, straight.stderr
    a, b = _weights(killed), _weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, trained + 3))

    # A different number of processes is refused in one line, before anything is written.
    before = {p.name: p.read_bytes() for p in killed.iterdir() if p.is_file()}
    for devices in (1, 3):
        refused = _cli(*TRAIN, "--epochs", "99", "--out", str(killed), "--resume", devices=devices)
        assert refused.returncode == 2
        errors = [ln for ln in refused.stderr.splitlines() if "ppl-ssvae" in ln]
        assert len(errors) == 1 and "trained by 2 process(es)" in errors[0], refused.stderr
    assert {p.name: p.read_bytes() for p in killed.iterdir() if p.is_file()} == before


def test_cli_a_single_process_run_is_not_resumed_by_two(tmp_path):
    run = tmp_path / "run"
    assert _cli(*TRAIN, "--epochs", "1", "--out", str(run), devices=1).returncode == 0
    refused = _cli(*TRAIN, "--epochs", "2", "--out", str(run), "--resume")
    assert refused.returncode == 2
    errors = [ln for ln in refused.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "trained by one process" in errors[0], refused.stderr


def _epochs_in(run: Path) -> int:
    try:
        return int(RunDir(run).load_checkpoint(CHECKPOINT)["epoch"])
    except Exception:
        return 0


def _children_with(pid: int, text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == pid and text in cmdline:
            found.append(int(entry.name))
    return found


def _refusal_worker(rank: int, store: str, run: str, out: str) -> None:
    from ppl_ssvae.errors import UserError

    _join(rank, store)
    try:
        fit(_digits_m2(), _digits(), epochs=1, batch_size=50, out=run, progress=False, device="cpu")
        outcome = "trained"
    except UserError as e:
        outcome = f"{type(e).__name__}: {e}"
    torch.save(outcome, f"{out}.{rank}")
    dist.destroy_process_group()


def test_a_refusal_on_rank_0_is_raised_on_every_rank_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    fit(_digits_m2(), _digits(), epochs=1, batch_size=100, out=run, progress=False, device="cpu")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _spawn(_refusal_worker, str(tmp_path / "store"), str(run), str(tmp_path / "outcome"))
    main, other = (torch.load(f"{tmp_path / 'outcome'}.{r}", weights_only=False) for r in (0, 1))
    assert main.startswith("UserError:") and "already holds a run" in main
    # the other rank gets the same words, marked as already reported by rank 0
    assert other == main.replace("UserError", "ReportedOnMain", 1)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
