"""Data-parallel training on ``torch.distributed``: DistributedDataParallel over the
model's Pyro objective, launched by ``torchrun`` (or ``ppl-ssvae train --devices N``).

Each process (rank) trains on its shard of every batch (``SemiSupervisedBatches(...,
shard=(rank, N))``: its slice of the labelled part and of the unlabelled part). The
objective is wrapped in a module whose ``forward`` is Pyro's
``ELBO.differentiable_loss(model, guide, x, y)``, and that module in
``torch.nn.parallel.DistributedDataParallel``, so gradients are all-reduced by DDP's own
bucketed hooks during the backward pass. Pyro's losses are sums over rows and DDP
averages gradients over ranks, so each rank back-propagates ``N x`` its shard's loss: the
average is then the gradient of the loss summed over the global batch, which is what one
process computes on that batch.

Rank 0 alone touches the run directory (lock, config, metrics, checkpoints); decisions it
makes (refusals, when to stop) are broadcast, so every rank raises or stops together.
Collectives time out (``timeout_s``), so a rank that dies cannot hang the others forever;
under ``torchrun`` the agent also stops every rank when one exits with an error.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import SEED_LIMIT, UserError

#: Seconds a collective may wait for the other ranks before it fails.
DEFAULT_TIMEOUT_S = 600.0
#: What gloo's and NCCL's errors about a lost or silent peer say.
PEER_MARKS = ("gloo", "Connection closed", "Connection reset", "NCCL", "timed out", "Timed out")
#: Set by ``ppl-ssvae train --devices``: its launcher reports a lost rank, not the ranks.
LAUNCHER_ENV = "PPL_SSVAE_LAUNCHER"
#: The exit code of a rank that lost a peer.
PEER_EXIT = 75
T = TypeVar("T")


class ReportedOnMain(UserError):
    """A refusal rank 0 has already printed; the other ranks exit with it silently."""


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, or was silent past the timeout."""


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as e:
        # gloo reports a lost peer as a bare RuntimeError from its transport, NCCL and
        # timeouts as DistError; other errors (in the model, say) pass through unchanged.
        text = str(e)
        if not (isinstance(e, dist.DistError) or any(m in text for m in PEER_MARKS)):
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise PeerFailure(f"{what} failed: {first}") from e


@dataclass(frozen=True)
class ProcessGroup:
    """The default process group this process trains in."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What config.json records; a resume must run with the same ``world_size``."""
        return {"world_size": self.world_size, "backend": self.backend}

    # -- collectives (every rank must call them, in the same order) --------------------
    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        box = [value]
        with _collective("a broadcast from rank 0"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        with _collective("a gather"):
            dist.all_gather_object(out, value)
        return out

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor (a copy; the input is left alone)."""
        total = value.detach().clone()
        with _collective("an all-reduce"):
            dist.all_reduce(total)
        return total

    def on_main(self, action: Callable[[], T]) -> T | None:
        """Run ``action`` on rank 0 only; a ``UserError`` it raises is raised on every rank
        (as ``ReportedOnMain`` off rank 0, so the message is printed once)."""
        outcome: tuple[str, Any] = ("ok", None)
        failed: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("ok", action())
            except UserError as e:
                outcome, failed = ("refused", str(e)), e
            except Exception as e:  # told to the others too, so that none waits for rank 0
                outcome, failed = ("crashed", f"{type(e).__name__}: {e}"), e
        status, payload = self.broadcast(outcome)
        if failed is not None:
            raise failed
        if status == "refused":
            raise ReportedOnMain(payload)
        if status == "crashed":
            raise PeerFailure(f"rank 0 failed: {payload}")
        return payload if self.is_main else None


def use_loopback() -> None:
    """Point gloo at the loopback interface, for ranks that all run on this machine, unless
    ``GLOO_SOCKET_IFNAME`` already names an interface. Without it gloo binds to the address
    the host name resolves to, which nothing guarantees is reachable (a stale /etc/hosts, a
    network that is down), and the ranks would wait out the timeout."""
    if "GLOO_SOCKET_IFNAME" in os.environ:
        return
    loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback[0]


def current() -> ProcessGroup | None:
    """The initialised process group of more than one rank, else None (one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return ProcessGroup(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=str(dist.get_backend()),
    )


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Join the process group ``torchrun`` describes in the environment: NCCL when this
    run trains on CUDA, gloo on CPU. Returns ``(group, device)``, the device being
    ``cuda:LOCAL_RANK`` for CUDA runs; ``(None, device)`` outside ``torchrun``."""
    if not launched():
        return None, device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UserError("--device cuda under torchrun but no CUDA device; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return current(), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's own draws (z samples): rank 0 keeps ``seed``, so its draws
    are a single process's; the others differ, so the ranks' noise is independent. Wrapped
    into the 32 bits numpy takes (a seed near 2**32 on rank 1 would overflow them)."""
    return (seed + 1_000_003 * rank) % SEED_LIMIT


class _Objective(nn.Module):
    """The model's Pyro objective as a module, so DDP's forward/backward hooks see it."""

    def __init__(self, model: nn.Module, elbo: Any) -> None:
        super().__init__()
        self.model, self.elbo = model, elbo

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Every parameter joins the graph (a zero term), so DDP can expect a gradient of
        # each in every step (no find_unused_parameters graph search) even where a shard
        # leaves one out: a rank with no rows in a short last batch, say.
        untouched = sum(p.sum() for p in self.model.parameters()) * 0.0
        if len(x) == 0:
            return untouched
        return self.elbo.differentiable_loss(self.model.model, self.model.guide, x, y) + untouched


class DataParallelSteps:
    """``svi.step``'s counterpart across ranks: one DDP forward/backward and optimiser
    step; returns the loss summed over the global batch (every rank gets the same)."""

    def __init__(self, model: nn.Module, elbo: Any, optim: Any, group: ProcessGroup) -> None:
        if not hasattr(elbo, "differentiable_loss"):
            raise UserError(
                f"data-parallel training needs an objective with a differentiable loss; "
                f"{type(elbo).__name__} has none: use trace_enum, trace or trace_mean_field"
            )
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.model, self.optim, self.group = model, optim, group
        self.ddp = nn.parallel.DistributedDataParallel(
            _Objective(model, elbo), device_ids=[group.local_rank] if on_cuda else None
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with _collective("DDP's forward pass"):
            loss = self.ddp(x, y)
        # The global loss is known before any gradient exists, so a non-finite loss on any
        # rank stops every rank with the weights of the last good step.
        total = float(self.group.sum(loss))
        if not torch.isfinite(torch.tensor(total)):
            return total
        with _collective("DDP's gradient all-reduce"):
            (loss * self.group.world_size).backward()
        self.optim([p for p in self.model.parameters() if p.grad is not None])
        return total
