"""Errors a user can fix; the CLI prints them as one line without a traceback."""


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
