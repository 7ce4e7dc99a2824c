"""Errors a user can fix; the CLI prints them as one line without a traceback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class UserError(ValueError):
    """Bad input or configuration: the message names the problem and the fix."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are missing or unreadable."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left untouched."""


class DivergenceError(NonFiniteLossError):
    """The loss grew by orders of magnitude past its start (finite, but diverged); reported
    and handled like a non-finite one: the last good checkpoint is left untouched."""


#: Seeds are 32-bit: numpy's legacy seeding (``pyro.set_rng_seed``) and scikit-learn's
#: ``random_state`` refuse anything outside [0, 2**32).
SEED_LIMIT = 2**32


def require(ok: bool, message: str) -> None:
    """Raise ``UserError(message)`` unless ``ok``: the settings objects' checks."""
    if not ok:
        raise UserError(message)


def is_int(value: object) -> bool:
    """An integer that is not a bool (JSON and argparse give both)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` if it is a usable seed, an integer in [0, 2**32); else one ``UserError``
    naming ``name`` (numpy and torch would fail deep inside with a traceback)."""
    require(
        is_int(value) and 0 <= value < SEED_LIMIT,
        f"{name}={value!r} must be an integer in [0, 2**32): numpy and torch take 32-bit seeds",
    )
    return value  # type: ignore[return-value]


def check_like_default(
    where: str, value: Any, default: Any, choices: Any = None, zero_ok: bool = False
) -> Any:
    """``value`` if it has the kind of ``default`` (text or a choice, a count, a number,
    widths), else a one-line UserError naming ``where``: a registry's family argument
    (``guide_args``, ``net_args``) checked against its factory's default. Counts and widths
    must be >= 1; numbers finite and > 0 (>= 0 with ``zero_ok``); widths may stay None
    where the default is None."""
    if choices is not None or isinstance(default, str):
        if choices is not None and value not in choices:
            raise UserError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if not isinstance(value, str):
            raise UserError(f"{where} must be text, got {value!r}")
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        raise UserError(f"{where} must not be true/false, got {value!r}")
    if isinstance(default, int):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{where} must be an integer >= 1, got {value!r}")
        return value
    if isinstance(default, float):
        low = ">= 0" if zero_ok else "> 0"
        if not is_finite_number(value) or value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{where} must be a finite number {low}, got {value!r}")
        return float(value)
    if value is None and default is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str) and value
    if not ok or not all(is_int(v) and v >= 1 for v in value):
        raise UserError(f"{where} must be a list of integers >= 1, got {value!r}")
    return tuple(value)
