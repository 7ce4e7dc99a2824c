"""Workers on one sweep: two local workers cover a grid exactly once; a worker killed -9
in the middle of a trial is given back, its retry resumes the run from its checkpoint,
and the sweep's table equals an uninterrupted sweep's; two workers on a real PostgreSQL
server."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.runs import read_spec_file
from ppl_ssvae.sweeps import SweepSpec, create_sweep, report_runs, run_worker
from ppl_ssvae.sweeps.engine import OWNER
from ppl_ssvae.sweeps.storage import read_sweep_file

from .conftest import BASE, GRID, start_worker, trials, write_sweep

pytest.importorskip("optuna")
GRID_POINTS = [(0, 50), (0, 100), (1, 50), (1, 100)]


def _complete(found: list) -> list[tuple[int, int]]:
    return sorted(
        (t.params["seed"], t.params["labels"]) for t in found if t.state.name == "COMPLETE"
    )


def test_two_local_workers_cover_the_grid_exactly_once(grid_sweep):
    path, code = grid_sweep
    assert code == 0
    found = trials(path)
    assert len(found) == 4 and _complete(found) == GRID_POINTS
    for trial in found:
        run = path / trial.user_attrs["run_dir"]
        spec = json.loads((run / "config.json").read_text())["spec"]
        assert (spec["fit"]["seed"], spec["data"]["labels"]) == (
            trial.params["seed"],
            trial.params["labels"],
        )
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert trial.value == history[0]["val_accuracy"] == trial.user_attrs["val_accuracy"]
        assert trial.user_attrs["test_accuracy"] == history[0]["test_accuracy"]
        assert trial.user_attrs["epochs"] == 1 and "test_elbo" in trial.user_attrs
        assert trial.intermediate_values == {1: history[0]["val_accuracy"]}
    assert len({p.name for p in path.iterdir() if p.is_dir()}) == 4


def _kill_mid_trial(worker, sweep_dir, epochs: int, timeout: float = 120.0):
    """Kill -9 the worker as soon as its run has a checkpoint and fewer than ``epochs``
    epochs (checkpoint.pt is written after metrics.jsonl); the trial it was running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        for metrics in sweep_dir.glob("*/metrics.jsonl"):
            checkpointed = (metrics.parent / "checkpoint.pt").exists()
            if checkpointed and len(metrics.read_text().splitlines()) < epochs:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
                caught = [
                    t
                    for t in trials(sweep_dir)
                    if t.user_attrs.get("run_dir") == metrics.parent.name
                ]
                return caught[-1]
        time.sleep(0.005)
    raise AssertionError(
        f"no trial was caught between its first and last epoch: {worker.communicate()}"
    )


def _table(sweep_dir) -> list[dict]:
    rows = report_runs([sweep_dir]).rows()
    return [{k: v for k, v in row.items() if k != "cpu_minutes"} for row in rows]


def test_a_killed_worker_s_trial_resumes_from_its_checkpoint(tmp_path):
    epochs = 3
    base = BASE.replace("epochs = 1, batch_size = 100", f"epochs = {epochs}, batch_size = 25")
    spec = SweepSpec.from_dict(
        read_spec_file(write_sweep(tmp_path, "[sweep.settings]\nseed = [0, 1]\n", base))
    )
    threads = torch.get_num_threads()
    try:  # the worker process's thread count, so that both sweeps compute alike
        run_worker(create_sweep(spec, tmp_path / "calm"), threads=1, say=lambda line: None)
        killed = tmp_path / "killed"
        create_sweep(spec, killed)
        caught = _kill_mid_trial(start_worker(killed), killed, epochs)
        assert caught.state.name == "RUNNING"
        # A worker started again gives the dead worker's trial back, resumes it, and
        # runs the rest of the sweep.
        lines: list[str] = []
        run_worker(killed, threads=1, say=lines.append)
    finally:
        torch.set_num_threads(threads)
    found = trials(killed)
    failed = [t for t in found if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [caught.number]
    victim = caught.system_attrs[OWNER]["pid"]
    assert failed[0].user_attrs["error"] == f"its worker (pid {victim}) died; queued again"
    retry = next(t for t in found if t.system_attrs.get("failed_trial") == caught.number)
    assert retry.state.name == "COMPLETE" and retry.params == caught.params
    assert retry.user_attrs["run_dir"] == caught.user_attrs["run_dir"]
    assert 1 <= retry.user_attrs["resumed_from_epoch"] < epochs
    assert retry.intermediate_values.keys() == {1, 2, 3}
    assert lines[0] == f"trial {retry.number} queued: a worker died in the trial it retries"
    assert read_sweep_file(killed).counts() == {"complete": 2, "retried": 1}
    assert sorted(t.params["seed"] for t in found if t.state.name == "COMPLETE") == [0, 1]
    assert _table(killed) == _table(tmp_path / "calm")


def test_two_workers_share_a_sweep_on_a_real_postgresql_server(tmp_path, postgres_url, capsys):
    spec = SweepSpec.from_dict(read_spec_file(write_sweep(tmp_path, GRID)))
    out = tmp_path / "sweep"
    create_sweep(spec, out, postgres_url)
    other = start_worker(out)  # a worker in its own process; this one joins once it works
    deadline = time.monotonic() + 120
    while not any(t.state.name == "RUNNING" for t in trials(out)) and time.monotonic() < deadline:
        assert other.poll() is None, other.communicate()
        time.sleep(0.05)
    run_worker(out, say=lambda line: None)
    assert other.wait(timeout=300) == 0, other.communicate()
    found = trials(out)
    assert len(found) == 4 and _complete(found) == GRID_POINTS
    assert {t.system_attrs[OWNER]["pid"] for t in found} == {other.pid, os.getpid()}
    assert json.loads((out / "sweep.json").read_text())["storage"] == postgres_url
    assert not (out / "optuna.journal").exists()
    # A worker on a machine without the sweep directory joins with the URL alone.
    elsewhere = tmp_path / "elsewhere"
    assert (
        main(["sweep", "--worker", str(elsewhere), "--storage", postgres_url, "--study", "sweep"])
        == 0
    )
    assert "4 complete" in capsys.readouterr().out
    assert json.loads((elsewhere / "sweep.json").read_text())["study"] == "sweep"


def test_a_gone_machine_s_running_trial_runs_again_only_when_named(tmp_path, monkeypatch):
    """A journal sweep carried to a new machine: the old machine's RUNNING trial is left
    alone (it may still be training) until the user names the machine as gone."""
    import socket

    from ppl_ssvae.sweeps import engine

    spec = SweepSpec.from_dict(
        read_spec_file(write_sweep(tmp_path, "[sweep.settings]\nseed = [0, 1]\n"))
    )
    sweep = create_sweep(spec, tmp_path / "sweep")
    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: "old-machine")
        taken = engine.take_trial(sweep.load_study(), spec)  # started there, never finished
    lines: list[str] = []
    threads = torch.get_num_threads()
    try:
        run_worker(sweep.path, threads=1, say=lines.append)
        assert read_sweep_file(sweep.path).counts() == {"complete": 1, "running": 1}
        hint = f"trial {taken.number} is running on old-machine; if that machine is gone, run again with --gone-host old-machine"
        assert lines[-1] == hint
        run_worker(sweep.path, threads=1, gone_hosts=("old-machine",), say=lines.append)
    finally:
        torch.set_num_threads(threads)
    found = trials(sweep.path)
    (failed,) = [t for t in found if t.state.name == "FAIL"]
    assert failed.number == taken.number
    assert (
        failed.user_attrs["error"] == "its machine old-machine is gone (--gone-host); queued again"
    )
    retry = next(t for t in found if t.system_attrs.get("failed_trial") == taken.number)
    # The grid point the old machine was given (a grid trial takes its params when it runs).
    assert retry.state.name == "COMPLETE" and retry.params == failed.system_attrs["fixed_params"]
    assert f"trial {retry.number} queued: it retries a trial of old-machine, which is gone" in lines
    assert read_sweep_file(sweep.path).counts() == {"complete": 2, "retried": 1}


def test_gone_host_naming_this_machine_is_refused_before_anything_is_written(tmp_path, capsys):
    import socket

    file = write_sweep(tmp_path, "[sweep.settings]\nseed = [0, 1]\n")
    argv = ["sweep", "--config", str(file), "--out", str(tmp_path / "sweep"),
            "--gone-host", socket.gethostname()]  # fmt: skip
    assert main(argv) == 2
    assert "names this machine" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
