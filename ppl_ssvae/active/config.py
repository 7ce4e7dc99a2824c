"""An active-labelling run's settings (``ActiveConfig``): the data, the model, the
clustering, the oracle and the confidence of propagated labels (Vengalil & Sinha sec 3.2-3.3),
checked once before anything is written, and what a resume may change."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import SEED_LIMIT, UserError, check_seed, is_finite_number, is_int, require
from ..nn.nets import NETS
from .clusters import CLUSTERINGS
from .confidence import DECAYS, DISTANCES

ORACLES = ("simulated", "human")
# Settings a resume may change: the loop can be run for more iterations.
RESUMABLE = ("iterations",)


@dataclasses.dataclass
class ActiveConfig:
    """Everything the loop does, saved as-is to config.json.

    Attributes:
        dataset, data_dir: the dataset by name (``ppl_ssvae.data.load``); every training
            label is hidden and no validation rows are carved out (they would be labels).
        iterations: N, rounds of cluster - query - propagate - train.
        queries: oracle queries per iteration, sub-cluster queries included (exact).
        k: clusters per clustering, top level and sub-clusters alike (paper: 10).
        clustering: ``"kmeans"`` or ``"gmm"``.
        distance: ``"euclidean"`` or ``"mahalanobis"`` (k-means only; a GMM uses
            responsibilities).
        decay: ``"exponential"`` (eq. 2) or ``"gaussian"`` (eq. 3) (k-means only).
        rate: a in eq. 2-3.
        beta: eq. 1's KL weight.
        gamma: eq. 4's weight of the propagated labels' classification loss.
        z_dim: the model's latent size.
        hidden: the model's dense layers.
        net: the model's networks by name (``ppl_ssvae.nn.NETS``): ``"dense"``, or
            ``"conv"``, the paper's (sec 3.2: a down-sampling convolution under the
            encoder's dense layers, an up-sampling deconvolution over the decoder's).
        net_args: that family's arguments (conv: ``channels``).
        train_fraction: the share of the training images the loop sees, a seeded draw;
            the paper's loop sees 70% (sec 3.1: the other 30% tune its hyper-parameters,
            which no one here tunes, so they are left out, their labels unread).
        patience: step (1) stops after this many epochs without a lower reconstruction
            loss (by ``min_improvement``, relative), or at ``pretrain_epochs``.
        min_improvement: the relative fall of the reconstruction loss that counts.
        pretrain_epochs: the most epochs of step (1).
        epochs: training epochs per iteration (step 6).
        batch_size: rows per step.
        lr: Adam's learning rate.
        seed: model weights, batches, noise and clusterings.
        oracle: ``"simulated"`` (ground truth of the rows nearest a centre) or ``"human"``.
        purity_threshold: the simulated oracle answers "invalid" below this purity of
            the ``neighbours`` rows nearest a centre.
        neighbours: the rows nearest a centre that the simulated oracle looks at.
        answers_file: a human oracle's answers, one line per centre (None: stdin).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    iterations: int = 5
    queries: int = 20
    k: int = 10
    clustering: str = "kmeans"
    distance: str = "euclidean"
    decay: str = "gaussian"
    rate: float = 0.1
    beta: float = 1.0
    gamma: float = 10.0
    z_dim: int = 10
    hidden: tuple[int, ...] = (256, 128)
    net: str = "dense"
    net_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_fraction: float = 1.0
    patience: int = 3
    min_improvement: float = 1e-3
    pretrain_epochs: int = 50
    epochs: int = 5
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    oracle: str = "simulated"
    purity_threshold: float = 0.5
    neighbours: int = 10
    answers_file: str | None = None

    def validate(self) -> None:
        """One UserError for the first bad field, before anything is written."""
        _choice("clustering", self.clustering, CLUSTERINGS)
        _choice("distance", self.distance, DISTANCES)
        _choice("decay", self.decay, DECAYS)
        _choice("oracle", self.oracle, ORACLES)
        for name in ("iterations", "queries", "k", "z_dim", "patience", "pretrain_epochs",
                     "batch_size", "neighbours"):  # fmt: skip
            require(is_int(getattr(self, name)) and getattr(self, name) >= 1,
                     f"{name}={getattr(self, name)!r} must be an integer >= 1")  # fmt: skip
        require(is_int(self.epochs) and self.epochs >= 0, f"epochs={self.epochs!r} must be >= 0")
        check_seed(self.seed)
        require(self.k >= 2, f"k={self.k} must be at least 2 (one cluster says nothing)")
        for name in ("rate", "beta", "lr"):
            require(is_finite_number(getattr(self, name)) and getattr(self, name) > 0,
                     f"{name}={getattr(self, name)!r} must be a number > 0")  # fmt: skip
        for name in ("gamma", "min_improvement"):
            require(is_finite_number(getattr(self, name)) and getattr(self, name) >= 0,
                     f"{name}={getattr(self, name)!r} must be a number >= 0")  # fmt: skip
        require(is_finite_number(self.purity_threshold) and 0 <= self.purity_threshold <= 1,
                 f"purity_threshold={self.purity_threshold!r} must be in [0, 1]")  # fmt: skip
        require(isinstance(self.hidden, (tuple, list)) and len(self.hidden) > 0
                 and all(is_int(h) and h >= 1 for h in self.hidden),
                 f"hidden={self.hidden!r} must be one or more layer sizes >= 1")  # fmt: skip
        _choice("net", self.net, tuple(NETS))
        require(isinstance(self.net_args, dict), f"net_args={self.net_args!r} must be a mapping")
        require(is_finite_number(self.train_fraction) and 0 < self.train_fraction <= 1,
                 f"train_fraction={self.train_fraction!r} must be in (0, 1]")  # fmt: skip
        require(self.answers_file is None or self.oracle == "human",
                 "answers_file is for oracle='human' only")  # fmt: skip
        require(isinstance(self.dataset, str), f"dataset={self.dataset!r} must be a name")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden),
                "net_args": dict(self.net_args)}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ActiveConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown active settings {unknown}; choose from {sorted(names)}")
        return cls(**{k: tuple(v) if k == "hidden" else v for k, v in values.items()})


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    require(value in choices, f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def wrapped_seed(seed: int) -> int:
    """A seed derived from the run's (seed + iteration, seed * 1000 + i) wrapped into the
    32 bits numpy, torch and scikit-learn take; for the derived seeds of runs with seed
    below 2**32 / 1000 (every run so far) it is the seed itself, so their numbers stand."""
    return seed % SEED_LIMIT
