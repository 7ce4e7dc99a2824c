"""The sweep directory and the Optuna storage its trials live in.

``SWEEP/sweep.json`` marks a directory as a sweep (``"format": "ppl-ssvae-sweep"``) and
records its spec, the Optuna study's name and the storage: by default Optuna's journal
file ``SWEEP/optuna.journal`` (embedded: nothing to install or start), or a database URL
(``--storage postgresql://...``) that workers on many machines share. The spec is also
kept in the study (user attribute ``ppl_ssvae_sweep``), so a worker on a machine without
the sweep directory can join with the URL alone. ``optuna-dashboard`` reads either
storage as it is.

A sweep is created once: everything is checked (spec, storage reachable, the directory
new or holding this very sweep) before the directory is made; sweep.json is written
before the study, and the grid is enqueued idempotently, so a creation cut short is
completed by running the same command again.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs.checkpoint import read_regular_file, write_text_atomic
from ..runs.directory import RunDir
from .params import run_name
from .spec import SweepSpec

SWEEP_FILE = "sweep.json"
JOURNAL = "optuna.journal"
FORMAT, FORMAT_VERSION = "ppl-ssvae-sweep", 1
SPEC_ATTR = "ppl_ssvae_sweep"
# Database storages: each running trial's worker writes a heartbeat this often; a trial
# whose heartbeat is older than the grace period is failed and queued again (its run
# directory resumes from its checkpoint).
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180


def optuna_module() -> Any:
    """Optuna, quiet (the workers say what happens, one line per trial), or one line
    saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UserError("sweeps need Optuna: pip install 'ppl-ssvae[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class Sweep:
    """An existing sweep: its directory, spec, storage and study name."""

    path: Path
    spec: SweepSpec | None  # None only while a joining worker reads it from the study
    storage_url: str | None
    study_name: str

    def storage(self) -> Any:
        if self.storage_url is None:
            return journal_storage(self.path / JOURNAL)
        return database_storage(self.storage_url)

    def load_study(self, storage: Any = None) -> Any:
        optuna = optuna_module()
        made = (
            {"sampler": self.spec.make_sampler(), "pruner": self.spec.make_pruner()}
            if self.spec
            else {}
        )
        try:
            return optuna.load_study(
                study_name=self.study_name, storage=storage or self.storage(), **made
            )
        except KeyError:
            raise UserError(f"the sweep storage holds no study named {self.study_name!r}; "
                            "create the sweep first (ppl-ssvae sweep --config FILE --out DIR)") from None  # fmt: skip

    def counts(self, study: Any = None) -> dict[str, int]:
        """Trials by state (``complete``, ``pruned``, ``fail``, ``running``, ``waiting``;
        ``retried``: failed when their worker died, and queued again)."""
        trials = (study or self.load_study()).get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        return dict(Counter("retried" if t.number in retried else t.state.name.lower()
                            for t in trials))  # fmt: skip


def create_sweep(spec: SweepSpec, out: str | Path, storage_url: str | None = None) -> Sweep:
    """Make the sweep directory ``out`` and its study (the grid's trials queued), or take
    up the same sweep there again; another sweep, or a directory that holds anything but
    a sweep, is refused in one line before anything is written."""
    optuna_module()
    path = Path(out)
    RunDir(path).check_usable()  # a file, below a file, not writable
    name = spec.name or path.resolve().name
    existing = _existing(path)
    if existing is not None:
        _check_same(existing, spec, storage_url, path)
        storage_url, name = existing.storage_url, existing.study_name
    storage = database_storage(storage_url) if storage_url else None  # reachable, first
    if existing is None:
        path.mkdir(parents=True, exist_ok=True)
        write_sweep_file(path, spec, storage_url, name)
    sweep = Sweep(path, spec, storage_url, name)
    study = _create_or_adopt(sweep, storage or sweep.storage())
    if spec.sampler == "grid":
        for point in spec.grid():
            params = {p.name: p.choices()[p.values.index(v)] for p, v in point.items()}
            study.enqueue_trial(
                params, user_attrs={"run_dir": run_name(point)}, skip_if_exists=True
            )
    return sweep


def open_sweep(
    path: str | Path, storage_url: str | None = None, study_name: str | None = None
) -> Sweep:
    """The sweep in ``path`` (its sweep.json; ``storage_url`` may name the same database
    as this machine reaches it), or, on a machine without the sweep directory, the study
    ``study_name`` [``path``'s name] in ``storage_url``, whose sweep.json is then written
    to ``path``."""
    optuna_module()
    path = Path(path)
    existing = _existing(path)
    if existing is not None:
        if storage_url and existing.storage_url is None:
            raise UserError(f"{path} keeps its trials in its own journal file; drop --storage")
        existing.storage_url = storage_url or existing.storage_url
        return existing
    if not storage_url:
        raise UserError(f"{path} is not a sweep directory (no {SWEEP_FILE}); give the sweep's "
                        "directory, or --storage URL to join a sweep kept in a database")  # fmt: skip
    RunDir(path).check_usable()
    storage = database_storage(storage_url)
    name = study_name or path.resolve().name
    study = Sweep(path, None, storage_url, name).load_study(storage)
    recorded = study.user_attrs.get(SPEC_ATTR)
    if recorded is None:
        raise UserError(
            f"study {name!r} in {shown_url(storage_url)} was not made by ppl-ssvae sweep"
        )
    spec = SweepSpec.from_dict(recorded)
    path.mkdir(parents=True, exist_ok=True)
    write_sweep_file(path, spec, storage_url, name)
    return Sweep(path, spec, storage_url, name)


def _existing(path: Path) -> Sweep | None:
    """The sweep recorded in ``path``; None for a new or empty directory; a refusal for a
    directory that holds other things."""
    marker = path / SWEEP_FILE
    if not path.is_dir() or (not marker.exists() and not marker.is_symlink()):
        if path.is_dir() and any(path.iterdir()):
            raise UserError(f"{path} is not empty and holds no sweep ({SWEEP_FILE}); ppl-ssvae "
                            "will neither use nor delete its files; choose another --out")  # fmt: skip
        return None
    return read_sweep_file(path)


def read_sweep_file(path: Path) -> Sweep:
    """``path/sweep.json``, read without following a link and checked."""
    file = path / SWEEP_FILE
    try:
        values = json.loads(read_regular_file(file))
    except (OSError, ValueError) as e:
        raise UserError(f"{file} is not readable as a sweep's record ({e}); ppl-ssvae will "
                        "neither use nor delete it") from None  # fmt: skip
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise UserError(f"{file} is not a ppl-ssvae sweep's record; choose another directory")
    if values.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{file} was written by another ppl-ssvae (sweep format "
                        f"{values.get('format_version')!r}, this one reads {FORMAT_VERSION})")  # fmt: skip
    try:
        spec = SweepSpec.from_dict(values["spec"])
    except (KeyError, UserError) as e:
        raise UserError(f"{file}: {e}") from None
    return Sweep(path, spec, values.get("storage"), str(values.get("study")))


def write_sweep_file(path: Path, spec: SweepSpec, storage_url: str | None, name: str) -> None:
    from ..training import environment

    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "study": name,
              "storage": storage_url, "spec": spec.to_dict(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "environment": environment()}  # fmt: skip
    write_text_atomic(path / SWEEP_FILE, json.dumps(record, indent=2, default=str) + "\n")


def _check_same(existing: Sweep, spec: SweepSpec, storage_url: str | None, path: Path) -> None:
    if _normal(existing.spec.to_dict()) != _normal(spec.to_dict()):
        raise UserError(f"{path} holds another sweep (its {SWEEP_FILE} records other settings); "
                        f"continue it with `ppl-ssvae sweep --worker {path}`, or choose another --out")  # fmt: skip
    if storage_url is not None and storage_url != existing.storage_url:
        raise UserError(f"{path} keeps its trials in {shown_url(existing.storage_url)}, not "
                        f"{shown_url(storage_url)}; drop --storage to continue it")  # fmt: skip


def _create_or_adopt(sweep: Sweep, storage: Any) -> Any:
    """The sweep's study, created; or the same sweep's study found in the storage (a run
    of the same command again); another study of that name is refused."""
    optuna = optuna_module()
    spec, recorded = sweep.spec, _normal(sweep.spec.to_dict())
    try:
        study = optuna.create_study(storage=storage, study_name=sweep.study_name,
                                    direction=spec.direction, sampler=spec.make_sampler(),
                                    pruner=spec.make_pruner())  # fmt: skip
    except optuna.exceptions.DuplicatedStudyError:
        study = sweep.load_study(storage)
        found = study.user_attrs.get(SPEC_ATTR)
        if found is not None and _normal(found) != recorded:
            raise UserError(f"{shown_url(sweep.storage_url)} already holds a study named "
                            f"{sweep.study_name!r} of another sweep; set [sweep] name or choose "
                            "another --out") from None  # fmt: skip
        if found is not None:
            return study
        if study.get_trials(deepcopy=False):
            raise UserError(f"study {sweep.study_name!r} in {shown_url(sweep.storage_url)} was "
                            "not made by ppl-ssvae sweep; set [sweep] name") from None  # fmt: skip
    study.set_user_attr(SPEC_ATTR, recorded)
    return study


def journal_storage(file: Path) -> Any:
    """Optuna's journal file: one machine, many processes, nothing to run; its appends
    locked with ``flock`` (``JournalLock``)."""
    optuna = optuna_module()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(file), JournalLock(file)))


class JournalLock:
    """The journal's append lock as an ``flock`` on ``FILE.flock``: the kernel releases it
    when its process dies, so a worker killed -9 in the middle of an append holds up no
    other (Optuna's own file locks are broken only after a 30-second grace period)."""

    def __init__(self, file: Path) -> None:
        self.path = file.with_name(file.name + ".flock")
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fd, self.fd = self.fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def database_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url`` with heartbeats: a trial whose worker stopped
    beating is failed and queued again (``RetryFailedTrialCallback``); one line if the
    database cannot be reached."""
    optuna = optuna_module()
    import sqlalchemy.exc

    storages = optuna.storages
    retry = (
        getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
        or storages.RetryFailedTrialCallback
    )
    accepted = inspect.signature(storages.RDBStorage).parameters
    key = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in accepted
        else "failed_trial_callback"
    )
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return storages.RDBStorage(with_driver(url), engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                       grace_period=GRACE_SECONDS, **{key: retry(inherit_intermediate_values=True)})  # fmt: skip
    except ImportError:
        raise UserError(f"--storage {shown_url(url)}: its database driver is not installed; "
                        "pip install 'ppl-ssvae[sweep]' (psycopg, for PostgreSQL)") from None  # fmt: skip
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {shown_url(url)} is not a database URL "
                        "(postgresql://USER@HOST/DB, sqlite:///FILE.db)") from None  # fmt: skip
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"cannot reach the sweep storage {shown_url(url)} ({reason})") from None


def with_driver(url: str) -> str:
    """A ``postgresql://`` URL with the driver that is installed named in it (psycopg,
    else psycopg2): SQLAlchemy's default driver for the bare scheme changed between its
    versions, and the URL a user gives should work with whichever of them is installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://" + url.removeprefix("postgresql://")
    return url


def shown_url(url: str | None) -> str:
    """A storage as messages show it: the password of a database URL hidden."""
    if url is None:
        return "the sweep's journal file"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: shown as given, it holds no password
        return url


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
