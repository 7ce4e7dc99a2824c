"""A sweep worker: take a trial, run it, tell the study, until the sweep has nothing left
to start. Any number of workers, on one machine or many, work on one sweep at once; each
is an ordinary process that can be killed at any moment (see ``engine``)::

    from ppl_ssvae.sweeps import SweepSpec, create_sweep, run_worker

    sweep = create_sweep(SweepSpec.from_dict(read_spec_file("sweep.toml")), "runs/sweep")
    run_worker("runs/sweep")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import engine
from .storage import Sweep, open_sweep
from .trial import Outcome, run_trial


def run_worker(
    sweep: str | Path | Sweep,
    *,
    storage_url: str | None = None,
    study_name: str | None = None,
    threads: int | None = None,
    gone_hosts: tuple[str, ...] = (),
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Work on the sweep in ``sweep`` (its directory, or a ``Sweep``) until no trial is
    left to start; the study's trials by state at the end.

    Args:
        storage_url: the sweep's database as this machine reaches it; on a machine without
            the sweep directory, the database to join it from (with ``study_name``).
        threads: torch's CPU threads for this worker (``--jobs N`` gives each of N workers
            its share of the cores).
        gone_hosts: machines that worked on the sweep and are gone: their RUNNING trials
            are queued again, each resuming its run directory's checkpoint if it has one.
        say: where the one line per finished trial goes.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if not isinstance(sweep, Sweep):
        sweep = open_sweep(sweep, storage_url, study_name)
    study = sweep.load_study()
    for number, host in engine.reclaim_gone(study, set(gone_hosts)):
        say(f"trial {number} queued: it retries a trial of {host}, which is gone")
    while True:
        for number in engine.reclaim_dead(study):
            say(f"trial {number} queued: a worker died in the trial it retries")
        engine.fail_stale(study)
        trial = engine.take_trial(study, sweep.spec)
        if trial is None:
            break
        outcome = _run(study, trial, sweep)
        say(outcome.line(trial.number, sweep.spec.objective))
    for number, host in engine.running_elsewhere(study):
        say(f"trial {number} is running on {host}; if that machine is gone, run again with "
            f"--gone-host {host}")  # fmt: skip
    return sweep.counts(study)


def _run(study: Any, trial: Any, sweep: Sweep) -> Outcome:
    """Run ``trial`` and record its outcome; interrupted (Ctrl-C), the trial is failed and
    queued again, so the next worker resumes its run directory."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        with engine.heartbeat(study, trial):
            outcome = run_trial(trial, sweep.spec, sweep.path)
    except BaseException:
        engine.give_back(study, trial, "interrupted")
        raise
    try:
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        if outcome.state == "complete":
            study.tell(trial, outcome.value)
        else:
            state = TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL
            study.tell(trial, state=state)
    except UpdateFinishedTrialError:  # its heartbeat was judged stale: a retry has it
        reason = "another worker had given it up (no heartbeat); its retry takes the run over"
        return Outcome("failed", None, {**outcome.attrs, engine.ERROR: reason}, outcome.settings)
    return outcome


def describe(counts: dict[str, int]) -> str:
    """``9 complete, 1 pruned, 1 failed`` (the states that have trials)."""
    names = (("complete", "complete"), ("pruned", "pruned"), ("fail", "failed"),
             ("running", "running"), ("waiting", "waiting"), ("retried", "retried"))  # fmt: skip
    return ", ".join(f"{counts[k]} {shown}" for k, shown in names if counts.get(k)) or "no trials"
