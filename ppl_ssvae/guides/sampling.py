"""Drawing from guide distributions outside the ELBO (classification, diagnostics)."""

from __future__ import annotations

import torch
from torch.distributions import Distribution


@torch.no_grad()
def seeded_sample(
    distribution: Distribution, n: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """``n`` draws from ``distribution`` under a fixed seed, restoring the RNG state after.

    Uses ``rsample`` (every guide family has it; zuko flows have no ``sample``) under
    ``no_grad``, so predictions built on the draws are deterministic functions of the
    input and leave the global RNG where it was.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return distribution.rsample((n,))
