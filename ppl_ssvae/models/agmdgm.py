"""Willetts et al. AGM-DGM: the GM-DGM with the ADGM's auxiliary latent ``a``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch

from ..nn import LabelGaussian
from .base import DATA_PLATE, GuideModules, split_labels
from .config import NetConfig
from .label_latent import AuxiliaryLabelLatentModel


@dataclasses.dataclass
class AGMDGMConfig(NetConfig):
    """AGM-DGM hyper-parameters; defaults follow Willetts et al. App. B and Table 1 (two
    hidden layers, z = 200, a = 100) and, where App. B is silent or terse, the authors'
    released code (ReLU, alpha, initialisation).

    Attributes:
        a_dim: size of the auxiliary latent ``a``.
        alpha: weight of the classification term alpha * log q(y|a, x) per labelled row
            (Willetts eq. 8, with eq. 23's q(y|x) estimated at the sampled a). The
            authors' code uses 1.1 on the batch means of 100 labelled and 100 unlabelled
            rows, which is 1.1 per labelled row here when batches are 1:1 (the
            ``fit_defaults``).
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        prior: class prior p(y) (eq. 29); uniform when None. For semi-unsupervised
            learning see :func:`ppl_ssvae.models.priors.semi_unsupervised_prior`.
        classify_samples: N_s, the draws a_i ~ q(a|x) averaged by the classifier (eq. 33).
    """

    z_dim: int = 200
    a_dim: int = 100
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "relu"
    alpha: float = 1.1
    sigma2: float | None = 1.0
    prior: tuple[float, ...] | None = None
    # App. B's 0.001, on the output layers as the authors' code applies it.
    init_std: float | None = 0.001
    init_layers: str = "heads"
    classify_samples: int = 10


class AGMDGM(AuxiliaryLabelLatentModel):
    r"""The auxiliary Gaussian mixture deep generative model.

    Generative story (Willetts et al. eq. 32 with eq. 16, 29-31)::

        y ~ Cat(pi)                          p(y), eq. 29
        z ~ N(mu(y), diag sigma^2(y))        p_theta(z|y), eq. 30: linear in onehot(y)
        x ~ p_theta(x | z)                   eq. 31: Bernoulli, or Gaussian with fixed sigma^2
        a ~ N(mu(x, y, z), diag sigma^2(x, y, z))        p(a|x, y, z), eq. 16

    Inference as for the ADGM (eq. 17-20): ``q(a, y, z|x) = q(z|a, y, x) q(y|a, x) q(a|x)``,
    :class:`~ppl_ssvae.guides.AuxiliaryGuide`, ``q(a|x)`` and ``q(z|a, y, x)`` of the
    config's guide family.

    Objective (eq. 21-22 in the form of eq. 8), maximised::

        J = sum_labelled [L(x, y) + alpha log q(y|a, x)] + sum_unlabelled L(x)
        L(x, y) = E_q(a|x) q(z|a,y,x)[log p(a|x,y,z) + log p(x|z) + log p(z|y) + log p(y)
                                      - log q(z|a,y,x) - log q(a|x)]
        L(x)    = E_q(a|x)[sum_y q(y|a,x) (L_a(x, y) - log q(y|a,x))]

    ``y`` is enumerated exactly given each draw of ``a`` (Willetts sec 5.4).

    Classifier (eq. 33): ``q(y|x) ~= (1/N_s) sum_i q(y|a_i, x)``, ``a_i ~ q(a|x)``,
    ``N_s = classify_samples``, drawn with a fixed seed so predictions are repeatable.

    ``p(a|x, y, z)`` is always Gaussian: eq. 16's Bernoulli alternative cannot score the
    real-valued ``a`` drawn from the Gaussian q(a|x).
    """

    name = "agmdgm"
    config_class = AGMDGMConfig
    # App. B: Adam at 3e-4 (decayed only every 200 epochs), 100 labelled + 100 unlabelled
    # rows per batch.
    fit_defaults: ClassVar[dict[str, Any]] = {"lr": 3e-4, "lr_decay": 1.0, "labelled_share": "1:1"}

    def __init__(self, config: AGMDGMConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        self.p_z = LabelGaussian(c.num_classes, c.z_dim)
        self.p_x = self.net_decoder({"z": c.z_dim})
        self.p_a = self.auxiliary_prior()
        self.q = self.auxiliary_guide()
        self._initialise()

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p_z", self.p_z)
        pyro.module(f"{self.name}.p_x", self.p_x)
        pyro.module(f"{self.name}.p_a", self.p_a)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.prior), obs=y_filled, obs_mask=observed)
            z = pyro.sample("z", self.p_z(y))
            pyro.sample("x", self.p_x(z), obs=x)
            pyro.sample("a", self.p_a(x=x, z=z, y=y))

    def p_x_given_y(self, y: torch.Tensor) -> dist.Distribution:
        # a is a leaf of the generative model: x does not depend on it.
        return self.p_x(self.p_z(y).sample())

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        # The decoder does not see y: the class reaches x only through p(z|y).
        return self.p_x(z)
