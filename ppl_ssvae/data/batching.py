"""Mixed labelled/unlabelled batches.

Every step sees a labelled part and an unlabelled part; an epoch is one pass over the
unlabelled rows while the labelled rows are cycled and reshuffled. The last batch of an
epoch may hold fewer unlabelled rows than the others; it then gets labelled rows in the
same proportion (at least one), so no batch over-weights the labelled rows. Each epoch's
order is drawn from ``(seed, epoch)`` alone, so a resumed run replays the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..errors import UserError


def parse_labelled_share(value: str | float) -> str | float:
    """``"natural"``, ``"1:1"`` or a float in [0, 1) giving the labelled share of a batch."""
    if isinstance(value, str):
        if value == "natural":
            return value
        if value == "1:1":
            return 0.5
        try:
            value = float(value)
        except ValueError:
            raise UserError(
                f"labelled share {value!r} not understood; use 'natural', '1:1' or a number "
                "in [0, 1)"
            ) from None
    if not 0.0 <= value < 1.0:
        raise UserError(f"labelled share {value} must be in [0, 1) (or 'natural', '1:1')")
    return float(value)


class SemiSupervisedBatches:
    """Iterate mixed batches of ``batch_size`` rows, ``y == -1`` marking unlabelled rows.

    Args:
        x: training inputs.
        y: kept labels (``-1`` for unlabelled); may be ``(N, F)``, one column per label
            factor.
        batch_size: rows per step, labelled and unlabelled together; the last step of
            an epoch is smaller when the unlabelled rows do not fill it (its labelled
            part shrinks in proportion, keeping at least one labelled row).
        labelled_share: ``"natural"`` (the training set's own proportion), ``0.5`` /
            ``"1:1"`` (upsample labelled rows to half of every batch), or any share in [0, 1).
        binarize: draw a fresh Bernoulli image for every batch (dynamic binarisation).
        seed: base seed; epoch ``e`` uses a generator seeded from ``(seed, e)``.
        shard: ``(rank, world_size)`` of a data-parallel run: ``batch_size`` is then the
            global batch, and this process gets its slice of each step's labelled part and
            of its unlabelled part, so the labelled share holds on every rank and the
            ranks' slices together are exactly the single-process batch (same rows, same
            binarisation draws).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 200,
        labelled_share: str | float = "natural",
        binarize: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be >= 1")
        if y.dim() not in (1, 2) or len(y) != len(x):
            raise UserError(
                f"y has shape {tuple(y.shape)} but x has {len(x)} rows; give one label per "
                "row ((N,) or (N, F)), -1 for unlabelled rows"
            )
        self.x, self.y, self.binarize, self.seed = x, y, binarize, seed
        self.rank, self.world_size = shard
        # (N, F) labels (several label factors, e.g. pi-VAE heads): a row is labelled
        # when any of its factors is.
        labelled = y >= 0 if y.dim() == 1 else (y >= 0).any(-1)
        self.labelled_idx = torch.nonzero(labelled).squeeze(1)
        self.unlabelled_idx = torch.nonzero(~labelled).squeeze(1)
        n_l, n_u = len(self.labelled_idx), len(self.unlabelled_idx)
        if n_l + n_u == 0:
            raise UserError("no training rows")
        share = parse_labelled_share(labelled_share)
        if n_u == 0:  # fully labelled: an epoch is a pass over the labelled rows
            self.labelled_per_step = batch_size
        elif n_l == 0:
            self.labelled_per_step = 0
        elif share == "natural":
            self.labelled_per_step = max(1, round(batch_size * n_l / (n_l + n_u)))
        else:
            self.labelled_per_step = max(1, round(batch_size * share)) if share > 0 else 0
        self.labelled_per_step = min(self.labelled_per_step, batch_size - (n_u > 0))
        self.unlabelled_per_step = batch_size - self.labelled_per_step if n_u else 0
        anchor = n_u if n_u else n_l
        per_step = self.unlabelled_per_step if n_u else self.labelled_per_step
        self.steps_per_epoch = math.ceil(anchor / per_step)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def batch_sizes(self) -> list[tuple[int, int]]:
        """``(labelled, unlabelled)`` rows of every step of an epoch.

        A full-sized labelled part next to a short unlabelled remainder would weight the
        labelled terms more in that step (its per-row loss jumps), so the last step's
        labelled part is scaled to its unlabelled rows.
        """
        l_step, u_step, steps = self.labelled_per_step, self.unlabelled_per_step, len(self)
        sizes = [(l_step, u_step)] * steps
        if u_step:
            u_last = len(self.unlabelled_idx) - (steps - 1) * u_step
            l_last = round(l_step * u_last / u_step)
            sizes[-1] = (max(l_last, 1) if l_step else 0, u_last)
        return sizes

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the ``(x, y)`` batches of one epoch (deterministic in ``(seed, epoch)``)."""
        g = self._generator(epoch)
        n_l, n_u = len(self.labelled_idx), len(self.unlabelled_idx)
        unlabelled = self.unlabelled_idx[torch.randperm(n_u, generator=g)]
        sizes = self.batch_sizes()
        needed = sum(l_rows for l_rows, _ in sizes)
        if n_l and needed:
            # Cycle the labelled rows, reshuffling at every wrap-around.
            cycles = [torch.randperm(n_l, generator=g) for _ in range(math.ceil(needed / n_l))]
            labelled = self.labelled_idx[torch.cat(cycles)[:needed]]
        else:
            labelled = self.labelled_idx[:0]
        l_parts = labelled.split([l_rows for l_rows, _ in sizes])
        u_parts = unlabelled.split([u_rows for _, u_rows in sizes])
        for l_rows, u_rows in zip(l_parts, u_parts, strict=True):
            rows = torch.cat([l_rows, u_rows])
            x = self.x[rows]
            if self.binarize:
                # Drawn for the whole global batch, so every rank's slice of it is what a
                # single process would have drawn for those rows.
                x = torch.bernoulli(x, generator=g)
            if self.world_size > 1:
                mine = self._my_positions(len(l_rows), len(u_rows)).to(x.device)
                x, rows = x[mine], rows[mine]
            yield x, self.y[rows]

    def _my_positions(self, labelled: int, unlabelled: int) -> torch.Tensor:
        """This rank's positions in a global batch of ``labelled`` then ``unlabelled`` rows."""
        parts = [
            torch.arange(start, start + n).tensor_split(self.world_size)[self.rank]
            for start, n in ((0, labelled), (labelled, unlabelled))
        ]
        return torch.cat(parts)
