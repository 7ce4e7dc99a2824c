"""Divergence: a loss that stays finite but explodes, and the distribution-validation
errors an exploding step raises. Both stop training like a non-finite loss, with the last
good checkpoint intact (``ppl_ssvae.train``); self-contained, so it can become a callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Default ``FitSettings.divergence_factor``.
DIVERGENCE_FACTOR = 1e4

# What torch.distributions says when a distribution is given an invalid parameter or value
# (Pyro validates every sample site): after an overflow, NaN/inf where finite numbers belong.
_VALIDATION_MESSAGES = ("Expected parameter ", "Expected value argument ")


def is_validation_error(error: BaseException) -> bool:
    """Whether ``error`` is a distribution's argument validation failing, which inside a
    training step means the networks' outputs overflowed (activations, not weights)."""
    return isinstance(error, ValueError) and str(error).startswith(_VALIDATION_MESSAGES)


@dataclass
class DivergenceGuard:
    """Stops a run whose loss per row grows past ``factor`` times its start.

    The start is the magnitude of the run's first step's loss per row, at the initial
    weights (at least 1 nat, so a loss that starts near 0 still has a scale); it is part of
    the checkpoint, so a resumed run keeps the uninterrupted run's threshold. A healthy
    run's loss falls from its start and an early spike stays within a small multiple of it;
    a diverging one passes it by many orders (``--lr 1e6`` on digits: 1.6e29 per row
    against a start of about 50), so the default of 1e4 leaves room for any noisy but
    healthy run and still stops a divergence within its first steps.

    Attributes:
        factor: the growth that counts as divergence; None turns the guard off.
        start: the first step's loss magnitude per row (None until a step has run).
    """

    factor: float | None = DIVERGENCE_FACTOR
    start: float | None = None

    def check(self, loss_per_row: float) -> str | None:
        """None while the loss is within bounds, else why it counts as diverged."""
        if self.start is None:
            self.start = max(abs(loss_per_row), 1.0)
            return None
        if self.factor is None or not math.isfinite(loss_per_row):
            return None  # a non-finite loss is the non-finite guard's to report
        limit = self.factor * self.start
        if loss_per_row <= limit:
            return None
        return (
            f"the loss diverged to {loss_per_row:.3g} per row, over divergence_factor="
            f"{self.factor:g} times its start ({self.start:.3g})"
        )
