"""A guide with no label latent: just ``q(z|x)`` (Jurasiński sec 4.1, Prop. 1-2)."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import nn

from ..plates import DATA_PLATE


class EncoderGuide(nn.Module):
    """``q(z|x)`` for models whose label is never a guide latent (the latent classifier).

    Any module ``x -> distribution over z`` can be plugged in (Gaussian, flow...): the
    model needs nothing else from its guide.

    Args:
        q_z: module ``q_z(x=x) -> distribution over z``.
    """

    def __init__(self, q_z: nn.Module) -> None:
        super().__init__()
        self.q_z = q_z

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, row_weights: torch.Tensor | None = None
    ) -> None:
        # The model weights whole rows (Jurasiński's lambda on L_our), and -log q(z|x) is
        # part of each row's bound, so the guide applies the same per-row weights.
        with pyro.plate(DATA_PLATE, x.shape[0]), poutine.scale(scale=_scale(row_weights)):
            pyro.sample("z", self.q_z(x=x))


def _scale(row_weights: torch.Tensor | None) -> torch.Tensor | float:
    return 1.0 if row_weights is None else row_weights
