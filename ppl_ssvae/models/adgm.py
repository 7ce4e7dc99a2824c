"""Maaløe et al. (2016) ADGM: M2 with an auxiliary latent ``a`` (Willetts et al. sec 3.3)."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import torch

from .base import DATA_PLATE, GuideModules, split_labels
from .config import NetConfig
from .label_latent import AuxiliaryLabelLatentModel
from .priors import StandardNormalPrior


@dataclasses.dataclass
class ADGMConfig(NetConfig):
    """ADGM hyper-parameters; defaults follow Maaløe et al. (two hidden layers of 500,
    a = z = 100).

    Attributes:
        a_dim: size of the auxiliary latent ``a``.
        alpha: weight of the classification term alpha * log q(y|a, x) per labelled row
            (Willetts eq. 8, with eq. 23's q(y|x) estimated at the sampled a).
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        prior: class prior p(y) (eq. 14); uniform when None.
        classify_samples: N_s, the draws a_i ~ q(a|x) averaged by the classifier (eq. 33).
    """

    z_dim: int = 100
    a_dim: int = 100
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "softplus"
    alpha: float = 50.0
    sigma2: float | None = 1.0
    prior: tuple[float, ...] | None = None
    classify_samples: int = 10


class ADGM(StandardNormalPrior, AuxiliaryLabelLatentModel):
    r"""The auxiliary deep generative model.

    Generative story (Willetts et al. eq. 12-16)::

        y ~ Cat(pi)                     p(y)             eq. 14
        z ~ N(0, I)                     p(z)             eq. 13
        x ~ p_theta(x | y, z)           Bernoulli, or Gaussian with fixed sigma^2 (eq. 15)
        a ~ N(mu(x, y, z), diag sigma^2(x, y, z))        p(a|x, y, z), eq. 16

    Inference (eq. 17-20): ``q(a, y, z|x) = q(z|a, y, x) q(y|a, x) q(a|x)`` with
    ``q(y|a, x) = Cat(pi_phi(a, x))`` and ``q(a|x)``, ``q(z|a, y, x)`` of the config's guide
    family (diagonal Gaussians by default, as in the paper; ``guide={"z": m, "a": m2}``
    for modules); see :class:`~ppl_ssvae.guides.AuxiliaryGuide`.

    Objective (eq. 21-22 in the form of eq. 8), maximised::

        J = sum_labelled [L(x, y) + alpha log q(y|a, x)] + sum_unlabelled L(x)
        L(x, y) = E_q(a|x) q(z|a,y,x)[log p(a|x,y,z) + log p(x|y,z) + log p(y) + log p(z)
                                      - log q(z|a,y,x) - log q(a|x)]
        L(x)    = E_q(a|x)[sum_y q(y|a,x) (L_a(x, y) - log q(y|a,x))]

    where ``L_a`` is the bracket of ``L(x, y)`` at that ``a``. ``y`` is enumerated
    exactly given each ``a`` (Willetts sec 5.4); ``a`` and ``z`` are reparameterised
    single draws (pass ``num_particles`` to :meth:`make_elbo` for more).

    Classifier (eq. 23/33): ``q(y|x) ~= (1/N_s) sum_i q(y|a_i, x)``, ``a_i ~ q(a|x)``,
    ``N_s = classify_samples``, drawn with a fixed seed so predictions are repeatable.

    ``p(a|x, y, z)`` is always Gaussian: eq. 16's Bernoulli alternative cannot score the
    real-valued ``a`` drawn from the Gaussian q(a|x).
    """

    name = "adgm"
    config_class = ADGMConfig

    def __init__(self, config: ADGMConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        self.p_x = self.net_decoder({"z": c.z_dim, "y": c.num_classes})
        self.p_a = self.auxiliary_prior()
        self.q = self.auxiliary_guide()
        self._initialise()

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p_x", self.p_x)
        pyro.module(f"{self.name}.p_a", self.p_a)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.prior), obs=y_filled, obs_mask=observed)
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x(z, y), obs=x)
            pyro.sample("a", self.p_a(x=x, z=z, y=y))

    def p_x_given_y(self, y: torch.Tensor) -> dist.Distribution:
        # a is a leaf of the generative model: x does not depend on it.
        return self.p_x(self.p_z(y.shape).sample(), y)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(z, y)
