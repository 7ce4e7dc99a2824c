"""How workers share a study: take a trial, prove it is being worked on, give back the
trials of workers that died. Every use of Optuna below its public surface is here
(``study._storage``, trial ids), so an Optuna upgrade touches one module.

- **Taking a trial.** A worker first takes a waiting trial (a grid point, or a retry):
  the state change WAITING -> RUNNING is one atomic write in the storage (a row lock in
  a database, the first log entry in the journal), so two workers never take the same
  trial. A grid is all enqueued when the sweep is made, so its workers never ask the
  sampler for a new trial (``study.ask`` would, once the queue is empty, and a grid
  sampler then repeats a point); a search creates a trial while its budget allows.
- **Dead workers.** A worker records its host, pid and the process's start time on the
  trial it runs. A RUNNING trial whose recorded process no longer exists on this host is
  failed, with its reason in the user attribute ``error``, and queued again with the
  same settings, user attributes (its run directory) and reported epochs, as Optuna's
  ``RetryFailedTrialCallback`` does. The retry trains into the same run directory and
  resumes from its checkpoint. On a database, Optuna's heartbeat does the same for
  workers on other machines (``storage.HEARTBEAT_SECONDS``). A journal file has no
  heartbeat: when a machine that worked on it is gone (the sweep directory carried to a
  new one), ``--gone-host HOST`` says so, and its RUNNING trials are queued again alike.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from .spec import SweepSpec

OWNER = "ppl_ssvae:worker"
#: User attribute holding a failed trial's one-line reason.
ERROR = "error"


def take_trial(study: Any, spec: SweepSpec) -> Any | None:
    """The next trial for this worker (an ``optuna.Trial``, marked as this process's), or
    None when the sweep has nothing left to start."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # Retries first: a sweep started again finishes the runs it had begun.
    for frozen in sorted(waiting, key=lambda t: ("failed_trial" not in t.system_attrs, t.number)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return _begin(study, spec, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    if spec.sampler == "grid" or started(study) >= (spec.n_trials or 0):
        return None
    return _begin(study, spec, storage.create_new_trial(study._study_id))


def started(study: Any) -> int:
    """Trials started by the search itself (retries of a trial not counted)."""
    return sum("failed_trial" not in t.system_attrs for t in study.get_trials(deepcopy=False))


def _begin(study: Any, spec: SweepSpec, trial_id: int) -> Any:
    import optuna

    number = study._storage.get_trial(trial_id).number
    if spec.sampler != "grid":
        study.sampler = spec.make_sampler(number)
    study._storage.set_trial_system_attr(trial_id, OWNER, _owner(number))
    return optuna.Trial(study, trial_id)


def _owner(number: int) -> dict[str, Any]:
    pid = os.getpid()
    return {"trial": number, "host": socket.gethostname(), "pid": pid, "started": _start_time(pid)}


def reclaim_dead(study: Any) -> list[int]:
    """Fail and queue again the RUNNING trials whose worker ran on this host and no longer
    exists; the numbers of the retries. Trials of other hosts are the heartbeat's."""
    here, retried = socket.gethostname(), []
    for frozen, owner in _running_on(study, lambda host: host == here):
        if _alive(int(owner["pid"]), owner.get("started")):
            continue
        number = fail_and_retry(study, frozen, f"its worker (pid {owner['pid']}) died")
        if number is not None:
            retried.append(number)
    return retried


def check_gone_hosts(hosts: Iterable[str]) -> None:
    """Refuse ``--gone-host`` naming this machine: its dead workers are found without it,
    and its live ones would lose their trials."""
    if socket.gethostname() in hosts:
        raise UserError(
            f"--gone-host {socket.gethostname()} names this machine, whose dead workers are "
            "found without it; name only machines that stopped"
        )


def reclaim_gone(study: Any, hosts: set[str]) -> list[tuple[int, str]]:
    """Fail and queue again the RUNNING trials of workers on ``hosts``, machines the user
    says are gone (a journal file keeps no heartbeat, so nothing else can tell a machine
    that stopped from one still training); ``(retry number, host)`` for each."""
    check_gone_hosts(hosts)
    retried = []
    for frozen, owner in _running_on(study, lambda host: host in hosts):
        reason = f"its machine {owner['host']} is gone (--gone-host)"
        number = fail_and_retry(study, frozen, reason)
        if number is not None:
            retried.append((number, owner["host"]))
    return retried


def running_elsewhere(study: Any) -> list[tuple[int, str]]:
    """``(number, host)`` of the RUNNING trials of other machines on a storage with no
    heartbeat (a journal file), which only ``--gone-host`` can give back if those are gone."""
    if _heartbeat_interval(study._storage) is not None:
        return []
    here = socket.gethostname()
    found = _running_on(study, lambda host: host is not None and host != here)
    return [(frozen.number, owner["host"]) for frozen, owner in found]


def _running_on(study: Any, on_host: Callable[[Any], bool]) -> list[tuple[Any, dict[str, Any]]]:
    """The RUNNING trials whose own worker (not one copied from the trial a retry retries)
    ran on a host ``on_host`` accepts, each with its worker's record."""
    from optuna.trial import TrialState

    found = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = frozen.system_attrs.get(OWNER) or {}
        if owner.get("trial") == frozen.number and on_host(owner.get("host")):
            found.append((frozen, owner))
    return found


def _heartbeat_interval(storage: Any) -> int | None:
    """Seconds between a trial's heartbeats on ``storage``; None where it keeps none."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def fail_and_retry(study: Any, frozen: Any, reason: str) -> int | None:
    """Fail ``frozen`` (a RUNNING trial) with ``reason`` and queue a retry with its
    settings; the retry's number, or None when another worker did it first."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(frozen._trial_id, ERROR, f"{reason}; queued again")
        if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    system = {k: v for k, v in frozen.system_attrs.items() if k != OWNER}
    history = [*system.get("retry_history", []), frozen.number]
    system |= {"failed_trial": system.get("failed_trial", frozen.number), "retry_history": history}
    user = {k: v for k, v in frozen.user_attrs.items() if k != ERROR}
    retry = optuna.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs=user, system_attrs=system, intermediate_values=frozen.intermediate_values,
    )  # fmt: skip
    trial_id = storage.create_new_trial(study._study_id, template_trial=retry)
    return storage.get_trial(trial_id).number


def give_back(study: Any, trial: Any, reason: str) -> int | None:
    """``fail_and_retry`` for a trial this worker runs (an ``optuna.Trial``)."""
    return fail_and_retry(study, study._storage.get_trial(trial._trial_id), reason)


def fail_stale(study: Any) -> None:
    """Optuna's own heartbeat check (database storages): stale trials failed and retried."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while it runs, on storages that keep one."""
    storage = study._storage
    interval = _heartbeat_interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried next interval
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` runs (not a zombie) and is the one that started at
    ``started`` (a reused pid is another process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state != "Z" and (started is None or start == started)


def _start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and start time (clock ticks after boot), from
    /proc/PID/stat; None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # the command name may hold spaces
    return fields[0], int(fields[19])
