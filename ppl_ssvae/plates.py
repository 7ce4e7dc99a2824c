"""Conventions shared by models and guides: the data plate and how unlabelled rows look.

A leaf module so that guides need not import the models package (which imports guides).
"""

from __future__ import annotations

import torch

DATA_PLATE = "data"
MAX_PLATE_NESTING = 1


def split_labels(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(observed, y_filled)``: which rows carry a label, and labels with a valid
    placeholder (0) on unlabelled rows. Pyro needs valid ids there, not NaN."""
    observed = y >= 0
    return observed, torch.where(observed, y, torch.zeros_like(y))
