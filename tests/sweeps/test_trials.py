"""Trials: a pruned trial is recorded as pruned (and its run stays an ordinary run that
resumes by hand), a trial that fails is recorded with its one-line reason while the
sweep goes on, and a finished sweep started again keeps what it has."""

from __future__ import annotations

import json

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.errors import UserError
from ppl_ssvae.runs import read_spec_file
from ppl_ssvae.sweeps import SweepSpec, create_sweep, report_runs, run_worker

from .conftest import BASE, trials, write_sweep

pytest.importorskip("optuna")

PRUNED_SEARCH = """\
[sweep]
sampler = "random"
n_trials = 2
pruner = "threshold"
pruner_args = { lower = 1.5 }  # no accuracy reaches it: pruned after the first epoch

[sweep.settings]
lr = { log_uniform = [1e-3, 3e-3] }
"""


def test_a_pruned_trial_is_recorded_as_pruned_and_its_run_resumes_by_hand(tmp_path, capsys):
    base = BASE.replace("epochs = 1", "epochs = 3")
    spec = SweepSpec.from_dict(read_spec_file(write_sweep(tmp_path, PRUNED_SEARCH, base)))
    lines: list[str] = []
    counts = run_worker(create_sweep(spec, tmp_path / "sweep"), say=lines.append)
    assert counts == {"pruned": 2}
    found = trials(tmp_path / "sweep")
    for trial, line in zip(found, lines, strict=True):
        run = tmp_path / "sweep" / trial.user_attrs["run_dir"]
        assert trial.user_attrs["run_dir"].startswith(f"{trial.number:04d}_lr-")
        assert 1e-3 <= trial.params["lr"] <= 3e-3
        assert (
            json.loads((run / "config.json").read_text())["spec"]["fit"]["lr"] == trial.params["lr"]
        )
        history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1] and trial.intermediate_values == {
            1: history[0]["val_accuracy"]
        }
        assert line.endswith(f"pruned after epoch 1 ({trial.user_attrs['run_dir']})")
    with pytest.raises(UserError, match="no complete run to report"):
        report_runs([tmp_path / "sweep"])
    # Outside the sweep, the trial's callback does nothing: the run trains on by hand.
    run = tmp_path / "sweep" / found[0].user_attrs["run_dir"]
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()


FAILING = "[sweep.settings]\nlabels = [50, 100000]\nlr = [1e-3, 1e7]\n"


def test_a_failed_trial_keeps_its_reason_and_the_sweep_goes_on(tmp_path):
    spec = SweepSpec.from_dict(read_spec_file(write_sweep(tmp_path, FAILING)))
    sweep = create_sweep(spec, tmp_path / "sweep")
    assert run_worker(sweep, say=lambda line: None) == {"complete": 1, "fail": 3}
    found = {(t.params["labels"], t.params["lr"]): t for t in trials(tmp_path / "sweep")}
    assert found[50, 1e-3].state.name == "COMPLETE" and "error" not in found[50, 1e-3].user_attrs
    diverged = found[50, 1e7].user_attrs["error"]
    assert diverged.startswith("the loss diverged") and "\n" not in diverged
    assert "ask for at most" in found[100000, 1e-3].user_attrs["error"]
    # The same sweep started again keeps its trials: nothing is run twice.
    again = create_sweep(spec, tmp_path / "sweep")
    assert run_worker(again, say=lambda line: None) == {"complete": 1, "fail": 3}
    report = report_runs([tmp_path / "sweep"])
    assert (
        report.left_out == {"failed": 3}
        and "Left out (sweep trials not complete): 3 failed." in report.markdown()
    )


IWAE = """\
[sweep]
objective = "iwae"
iwae_samples = 4
iwae_rows = 20

[sweep.settings]
guide = ["gaussian"]
"""


def test_the_iwae_objective_scores_validation_rows_under_the_best_checkpoint(tmp_path):
    spec = SweepSpec.from_dict(read_spec_file(write_sweep(tmp_path, IWAE)))
    assert run_worker(create_sweep(spec, tmp_path / "sweep"), say=lambda line: None) == {
        "complete": 1
    }
    (trial,) = trials(tmp_path / "sweep")
    assert trial.value == trial.user_attrs["val_iwae"] < 0 and trial.user_attrs["iwae_samples"] == 4
    scores = json.loads((tmp_path / "sweep" / "guide-gaussian" / "sweep-scores.json").read_text())
    assert scores["scores"]["val_iwae"] == trial.value and len(scores["sha256"]) == 64
    (row,) = report_runs([tmp_path / "sweep"]).rows()
    assert row["val_iwae"]["mean"] == trial.value and row["test_elbo"]["n"] == 1


def test_a_trial_s_recorded_callback_is_rebuilt_by_name_in_a_fresh_process():
    """A trial's run records ``sweep_trial``; resuming it from Python (``load_run``) must
    not need the sweeps imported first."""
    import subprocess
    import sys

    code = ("from ppl_ssvae.training.callbacks import build_callback; "
            "print(type(build_callback('sweep_trial', {'monitor': 'elbo'})).__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ReportToTrial"
