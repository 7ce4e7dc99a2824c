"""Jurasiński (2019) App. E: M2 with an adversarial classifier that tries to read the label
from z', so that the game removes the label information from z'."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from ..errors import UserError
from ..nn import CategoricalHead, init_normal_
from .base import DATA_PLATE, GuideModules, split_labels
from .m2 import M2, M2Config


class ReverseGradient(torch.autograd.Function):
    """The identity forward; the gradient's sign flipped backward (Ganin & Lempitsky
    2015): one loss then trains the adversary down its cross-entropy and the encoder up."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


@dataclasses.dataclass
class AdversarialM2Config(M2Config):
    """M2's hyper-parameters and the adversary's.

    Attributes:
        adversary_weight: w, the weight of the adversary's cross-entropy in the game
            (App. E's objective has 1; 0 is M2).
        adversary_hidden: hidden layers of the adversary f_psi(y|z').
    """

    adversary_weight: float = 1.0
    adversary_hidden: tuple[int, ...] = (500,)

    may_be_zero: ClassVar[frozenset[str]] = M2Config.may_be_zero | {"adversary_weight"}


class AdversarialM2(M2):
    r"""M2 with an adversarial classifier on z' (Jurasiński App. E, Fig. 9).

    Generative story and guide: M2's (:class:`~ppl_ssvae.models.m2.M2`). The game::

        min_psi max_{theta, phi}  J^alpha_{theta, phi}
                                  + w sum_labelled E_q(z'|x, y)[-log f_psi(y | z')]

    The M2 networks gain by making the adversary's cross-entropy large, the adversary by
    making it small; the equilibrium keeps the label out of z' and in y. Pyro form: the
    model adds ``pyro.factor("adversary", w log f_psi(y | R(z')))`` on the labelled rows,
    with R the identity whose gradient is negated (:class:`ReverseGradient`). The loss is
    then ``-J^alpha + w CE``: its gradient descends the adversary's cross-entropy in psi
    and, through R, ascends it in the encoder phi, exactly the game's two moves taken at
    once.

    Jurasiński found no difference from M2 in preliminary runs and noted that adversarial
    setups are hard to train.
    """

    name = "m2-adversarial"
    config_class = AdversarialM2Config

    def __init__(self, config: AdversarialM2Config, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        if c.adversary_weight < 0:
            raise UserError(f"adversary_weight={c.adversary_weight} must be >= 0")
        self.adversary = CategoricalHead(c.z_dim, c.adversary_hidden, c.num_classes, c.activation)
        if c.init_std is not None:  # M2's _initialise ran before the adversary existed
            init_normal_(self.adversary, c.init_std, c.init_layers)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p", self.p_x)
        pyro.module(f"{self.name}.adversary", self.adversary)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.prior), obs=y_filled, obs_mask=observed)
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x(z, y), obs=x)
            with poutine.mask(mask=observed):
                guess = self.adversary(ReverseGradient.apply(z))
                pyro.factor("adversary", self.config.adversary_weight * guess.log_prob(y))
