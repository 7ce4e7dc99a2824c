"""Sweep fixtures: tiny sweep files on digits, worker processes, and a throwaway
PostgreSQL server for the many-machine path."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from glob import glob
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A run every test sweep starts from: seconds per trial on one core.
BASE = """\
data = { dataset = "digits", labels = 50 }
model = { name = "m2", options = { z_dim = 4, hidden = [32] } }
fit = { epochs = 1, batch_size = 100 }
"""


def write_sweep(folder: Path, sweep: str, base: str = BASE, name: str = "sweep.toml") -> Path:
    path = folder / name
    path.write_text(base + "\n" + sweep)
    return path


def worker_env() -> dict[str, str]:
    """A worker process's environment: this checkout first on the path, one thread."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start_worker(sweep_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "ppl_ssvae", "sweep", "--worker", str(sweep_dir),
               "--threads", "1", *extra]  # fmt: skip
    return subprocess.Popen(command, env=worker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _postgres_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own for one test (Debian's ``postgresql`` package, which
    ``.ci/setup`` installs): initdb into a temporary folder, listening on a Unix socket
    only, as the ``postgres`` user when the tests run as root; stopped and removed after.
    Skipped, with the reason, where it cannot start."""
    import importlib.util

    if not any(importlib.util.find_spec(d) for d in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver is installed (pip install '.[sweep]': psycopg)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian's postgresql package; .ci/setup installs it)"
        )
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser to start the server as postgres")
        prefix = [runuser, "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: a socket path is <108 bytes
    if prefix:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], cwd=folder, check=True, capture_output=True, text=True,
                       timeout=60)  # fmt: skip

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N")
        options = f"-k {folder} -c listen_addresses='' -p 5432 -F"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30",
            "-o", options, "start")  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        said = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        pytest.skip(f"could not start a throwaway PostgreSQL server: {said[-1] if said else e}")
    try:
        yield f"postgresql://postgres@/postgres?host={folder}&port=5432"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


GRID = "[sweep.settings]\nseed = [0, 1]\nlabels = [50, 100]\n"


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory):
    """A 2 x 2 grid swept by `ppl-ssvae sweep --jobs 2` (two worker processes); its
    directory and the command's exit status."""
    pytest.importorskip("optuna")
    from ppl_ssvae.cli import main

    folder = tmp_path_factory.mktemp("grid")
    file = write_sweep(folder, GRID)
    code = main(["sweep", "--config", str(file), "--out", str(folder / "sweep"), "--jobs", "2"])
    return folder / "sweep", code


def trials(sweep_dir: Path) -> list:
    from ppl_ssvae.sweeps.storage import read_sweep_file

    return read_sweep_file(sweep_dir).load_study().get_trials()
