"""Kingma et al. (2014) M2: the semi-supervised VAE with a categorical label latent."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import torch

from .base import DATA_PLATE, GuideModules, split_labels
from .config import NetConfig
from .label_latent import LabelLatentModel
from .priors import StandardNormalPrior


@dataclasses.dataclass
class M2Config(NetConfig):
    """M2 hyper-parameters; defaults follow Kingma et al. (one hidden layer of 500, z = 50).

    Attributes:
        alpha: weight of the classification term alpha * log q(y|x) per labelled row
            (Kingma eq. 9, Willetts eq. 8). Pyro's own M2 example uses 46; 100 did better
            on Fashion-MNIST with 3000 labels (README, results/m2_fashion_mnist).
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        prior: class prior p(y); uniform when None.
    """

    z_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    activation: str = "relu"
    alpha: float = 100.0
    sigma2: float | None = 1.0
    prior: tuple[float, ...] | None = None


class M2(StandardNormalPrior, LabelLatentModel):
    r"""Kingma's M2.

    Generative story (Kingma et al. 2014 eq. 2; Willetts et al. eq. 4)::

        y ~ Cat(pi)                     p(y)
        z ~ N(0, I)                     p(z)
        x ~ p_theta(x | y, z)           Bernoulli, or Gaussian with fixed sigma^2

    Inference (Willetts eq. 5-7): ``q(y, z|x) = q(z|x, y) q(y|x)`` with
    ``q(y|x) = Cat(pi_phi(x))`` and ``q(z|x, y)`` of the config's guide family, by default
    ``N(mu_phi(x, y), diag sigma^2_phi(x, y))`` (``guide="maf"`` etc. for a flow; or pass
    ``guide=module``, called as ``module(x=x, y=y)``).

    Objective (Kingma eq. 9 / Willetts eq. 8 / Jurasiński eq. 3), maximised::

        J^alpha = sum_labelled [L(x, y) + alpha log q(y|x)] + sum_unlabelled U(x)
        L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]
        U(x)    = sum_y q(y|x) L(x, y) + H[q(y|x)]

    Labelled and unlabelled rows share one plate: the model's ``y`` site is split by
    ``obs_mask`` and the latent half is enumerated in parallel by the guide, so one
    ``TraceEnum_ELBO`` loss is ``-J^alpha`` on a mixed batch.
    """

    name = "m2"
    config_class = M2Config

    def __init__(self, config: M2Config, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        self.p_x = self.net_decoder({"z": c.z_dim, "y": c.num_classes})
        self.q = self.label_guide()
        self._initialise()

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p", self.p_x)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.prior), obs=y_filled, obs_mask=observed)
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x(z, y), obs=x)

    def p_x_given_y(self, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(self.p_z(y.shape).sample(), y)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(z, y)
