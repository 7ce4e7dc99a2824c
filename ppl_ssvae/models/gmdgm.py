"""Willetts et al. GM-DGM: a Gaussian mixture p(z|y) under a label-free decoder p(x|z)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch

from ..nn import LabelGaussian
from .base import DATA_PLATE, GuideModules, split_labels
from .config import NetConfig
from .label_latent import LabelLatentModel


@dataclasses.dataclass
class GMDGMConfig(NetConfig):
    """GM-DGM hyper-parameters; defaults follow Willetts et al. App. B (two hidden layers,
    z = 200) and, where App. B is silent or terse, the authors' released code (ReLU, alpha,
    initialisation).

    Attributes:
        alpha: weight of the classification term alpha * log q(y|x) per labelled row
            (Willetts eq. 8). The authors' code uses 1.1 on the batch means of 100
            labelled and 100 unlabelled rows, which is 1.1 per labelled row here when
            batches are 1:1 (the ``fit_defaults``).
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        prior: class prior p(y) (eq. 29); uniform when None. For semi-unsupervised
            learning see :func:`ppl_ssvae.models.priors.semi_unsupervised_prior`.
    """

    z_dim: int = 200
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "relu"
    alpha: float = 1.1
    sigma2: float | None = 1.0
    prior: tuple[float, ...] | None = None
    # App. B's 0.001, on the output layers as the authors' code applies it.
    init_std: float | None = 0.001
    init_layers: str = "heads"


class GMDGM(LabelLatentModel):
    r"""The Gaussian mixture deep generative model.

    Generative story (Willetts et al. eq. 28-31)::

        y ~ Cat(pi)                          p(y), eq. 29
        z ~ N(mu(y), diag sigma^2(y))        p_theta(z|y), eq. 30: linear in onehot(y)
        x ~ p_theta(x | z)                   eq. 31: Bernoulli, or Gaussian with fixed sigma^2

    The decoder does not see ``y``: the class reaches ``x`` only through the mixture
    component ``p(z|y)``.

    Inference as for M2 (Willetts sec 5.2, eq. 5-7): ``q(y, z|x) = q(z|x, y) q(y|x)``,
    :class:`~ppl_ssvae.guides.CategoricalGaussianGuide`, ``q(z|x, y)`` of the config's
    guide family (diagonal Gaussian by default).

    Objective (eq. 2, 3, 8), maximised::

        J = sum_labelled [L(x, y) + alpha log q(y|x)] + sum_unlabelled U(x)
        L(x, y) = E_q(z|x,y)[log p(x|z) + log p(z|y) + log p(y) - log q(z|x,y)]
        U(x)    = sum_y q(y|x) L(x, y) + H[q(y|x)]

    with labelled and unlabelled rows in one plate and ``y`` enumerated by the guide,
    as in :class:`~ppl_ssvae.models.m2.M2`.
    """

    name = "gmdgm"
    config_class = GMDGMConfig
    # App. B: Adam at 3e-4 (decayed only every 200 epochs), 100 labelled + 100 unlabelled
    # rows per batch.
    fit_defaults: ClassVar[dict[str, Any]] = {"lr": 3e-4, "lr_decay": 1.0, "labelled_share": "1:1"}

    def __init__(self, config: GMDGMConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        self.p_z = LabelGaussian(c.num_classes, c.z_dim)
        self.p_x = self.net_decoder({"z": c.z_dim})
        self.q = self.label_guide()
        self._initialise()

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p_z", self.p_z)
        pyro.module(f"{self.name}.p_x", self.p_x)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.prior), obs=y_filled, obs_mask=observed)
            z = pyro.sample("z", self.p_z(y))
            pyro.sample("x", self.p_x(z), obs=x)

    def p_x_given_y(self, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(self.p_z(y).sample())

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        # The decoder does not see y: the class reaches x only through p(z|y).
        return self.p_x(z)
