"""The progress of a long IWAE estimate, kept so that an interrupted one resumes.

An IWAE at K = 5000 on 1000 images takes an hour or more on a CPU for a flow guide; a
killed process would lose all of it. :class:`KeptProgress` saves, at most every
``every_seconds``, the per-item estimates done so far and the random number generator's
state after them. Read back, the estimate goes on from the next item with the very draws
the uninterrupted estimate would have made, so the result is the same to the bit.

The caller supplies how the record is read and written (``read`` and ``write``), so that
a run directory's rules (its lock, no symbolic links followed) apply to it. What is read
back is used only when its key (checkpoint, K, rows, seed...) and shape match and its
generator state loads; anything else starts the estimate afresh.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UserError

#: How often an estimate saves its progress by default: a minute of passes at most is lost.
EVERY_SECONDS = 60.0


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


class KeptProgress:
    """Saves and restores one estimate's progress (see the module's docstring).

    Args:
        key: what the estimate is of; a record with another key is not used.
        read: the bytes of the last record, or None when there is none.
        write: replaces the record with the given text; an ``OSError`` or ``UserError``
            from it stops the keeping (the estimate runs on) and is said once by ``warn``.
        every_seconds: the least time between two saves; 0 saves after every pass.
        warn: says why the progress is no longer kept (None: nothing is said).
    """

    def __init__(
        self,
        key: dict[str, Any],
        read: Callable[[], bytes | None],
        write: Callable[[str], None],
        every_seconds: float = EVERY_SECONDS,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.key, self.read, self.write = key, read, write
        self.every_seconds, self.warn = every_seconds, warn
        self.saved_at = time.monotonic()
        self.shape: dict[str, int] = {}
        self.failed = False
        self.owns = False  # the record is this estimate's: written by it or matched its key
        # CPU seconds the interrupted estimate had spent, and this process's clock at start.
        self.earlier_cpu_seconds, self.started_cpu = 0.0, time.process_time()

    def resume(self, items: int, per_pass: int, device: torch.device) -> list[torch.Tensor]:
        """The estimates a matching record holds (empty without one); with one, the
        generator is left where the interrupted estimate had it."""
        self.shape = {"items": items, "per_pass": per_pass}
        self.saved_at = time.monotonic()
        record = self._matching_record()
        if record is None:
            return []
        try:
            earlier = float(record.get("cpu_seconds", 0.0))
            cpu = _decode(record["rng"])
            cuda = _decode(record["cuda_rng"]) if device.type == "cuda" else None
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, device)
        except (KeyError, TypeError, ValueError, RuntimeError):
            return []  # a state that does not load: start afresh
        self.owns = True
        self.earlier_cpu_seconds = earlier
        return [torch.tensor(record["done"], dtype=torch.get_default_dtype(), device=device)]

    def _matching_record(self) -> dict[str, Any] | None:
        raw = self.read()
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            done = record["done"]
            ok = (
                record["key"] == self.key
                and all(record[name] == value for name, value in self.shape.items())
                and isinstance(done, list)
                and 0 < len(done) < self.shape["items"]
                and len(done) % self.shape["per_pass"] == 0
                and all(isinstance(v, float) and not math.isnan(v) for v in done)
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            return None
        return record if ok else None

    def passed(self, out: list[torch.Tensor], device: torch.device, last: bool) -> None:
        """After a pass: save the estimates in ``out`` when the time has come (never after
        the last pass, whose result the caller keeps itself)."""
        if last or self.failed or time.monotonic() - self.saved_at < self.every_seconds:
            return
        done = torch.cat(out).tolist()
        record = {
            "key": self.key,
            **self.shape,
            "done": done,
            "cpu_seconds": self.earlier_cpu_seconds + time.process_time() - self.started_cpu,
            "rng": _encode(torch.get_rng_state()),
            "cuda_rng": _encode(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None,
        }  # fmt: skip
        try:
            self.write(json.dumps(record))
            self.owns = True
        except (OSError, UserError) as e:  # a locked or read-only directory: run on unkept
            self.failed = True
            if self.warn is not None:
                self.warn(f"the estimate's progress is not kept ({e})")
        self.saved_at = time.monotonic()
