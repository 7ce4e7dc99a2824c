"""Run the ``ppl-ssvae`` command inside the test process: the same ``main(argv)`` that
``python -m ppl_ssvae.cli`` calls, its exit code and what it printed to stderr, without
paying a Python and torch start-up per refusal case (about 2 CPU-seconds each, which made
the replay suites a quarter of the default suite). Each replay file keeps one case run as
a real process, so the two ways of running are checked to agree."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from ppl_ssvae.cli import main


def run_in_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``ppl-ssvae ARGV`` run from ``cwd``."""
    stderr, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    finally:
        os.chdir(here)
    return code, stderr.getvalue()


def run_as_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m ppl_ssvae.cli ARGV`` as its own process."""
    done = subprocess.run([sys.executable, "-m", "ppl_ssvae.cli", *argv], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return done.returncode, done.stderr


def assert_refused_in_one_line(code: int, stderr: str, expected: str) -> None:
    """A refusal as the command promises it: exit code 2, one line naming the problem
    (``expected`` in it), no traceback."""
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr, stderr
