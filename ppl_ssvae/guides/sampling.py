"""Drawing from guide distributions outside the ELBO (classification, diagnostics)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.distributions import Distribution


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG (and ``device``'s, on CUDA) seeded with ``seed`` inside, restored
    after: a seeded number is the same on every call and leaves the caller's stream alone."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def seeded_sample(
    distribution: Distribution, n: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """``n`` draws from ``distribution`` under a fixed seed, restoring the RNG state after.

    Uses ``rsample`` (every guide family has it; zuko flows have no ``sample``) under
    ``no_grad``, so predictions built on the draws are deterministic functions of the
    input and leave the global RNG where it was.
    """
    with seeded_rng(seed, device):
        return distribution.rsample((n,))
