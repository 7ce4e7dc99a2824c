"""What the step-cost benchmarks share: one training step of a model, and the contenders'
steps timed interleaved (alternating order each step) so that drifts of a shared machine
fall on every contender alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pyro
import torch

from ppl_ssvae.models.base import SemiSupervisedModel

Step = Callable[[torch.Tensor, torch.Tensor], None]


def svi_step(model: SemiSupervisedModel) -> Step:
    """One Adam step on the model's own objective."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elbo = model.make_elbo()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        # Every M2 registers its networks as "m2.*" in Pyro's param store: cleared per step
        # so that pyro.module hands each contender its own weights.
        pyro.clear_param_store()
        optimizer.zero_grad()
        elbo.differentiable_loss(model.model, model.guide, x, y).backward()
        optimizer.step()

    return step


def interleaved_medians(
    steps: dict[str, Step], data: list[tuple[torch.Tensor, torch.Tensor]], n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds per step of each contender over ``n`` steps, after two
    untimed warm-up steps each; contenders run in turn, reversed every other step."""
    names = list(steps)
    for name in names:
        for x, y in data[:2]:
            steps[name](x, y)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        x, y = data[i % len(data)]
        for name in names if i % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            steps[name](x, y)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return (
        {name: statistics.median(v) for name, v in wall.items()},
        {name: statistics.median(v) for name, v in cpu.items()},
    )
