"""Kingma et al. (2014) M1: the plain VAE of sec 3.1, trained on every row, labels ignored.

Its latent means are the features of the stacked M1+M2 (:mod:`ppl_ssvae.models.m1m2`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO

from ..errors import UserError
from ..guides.encoder import EncoderGuide
from ..guides.sampling import seeded_sample
from ..nn import Decoder
from ..objectives import REPARAMETERISED, build_elbo
from .base import DATA_PLATE, GuideModules, ModelConfig, SemiSupervisedModel
from .priors import StandardNormalPrior


@dataclasses.dataclass
class M1Config(ModelConfig):
    """M1 hyper-parameters; defaults follow Kingma et al. sec 4.1 (two hidden layers of
    600, a latent of 50).

    Attributes:
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
    """

    z_dim: int = 50
    hidden: tuple[int, ...] = (600, 600)
    activation: str = "relu"
    sigma2: float | None = 1.0


class M1(StandardNormalPrior, SemiSupervisedModel):
    r"""Kingma's M1, a VAE (Kingma et al. 2014 sec 3.1, eq. 1)::

        z ~ N(0, I)                 p(z)
        x ~ p_theta(x | z)          Bernoulli, or Gaussian with fixed sigma^2

    Inference: ``q(z|x)`` of the config's guide family, by default
    ``N(mu_phi(x), diag sigma^2_phi(x))`` (Kingma eq. 3).

    Objective, maximised, over every row (labels are ignored)::

        J = sum_n E_q(z|x_n)[log p(x_n|z)] - KL(q(z|x_n) || p(z))

    The KL term is analytic where the guide has one (``trace_mean_field``, the default),
    as in Kingma & Welling's estimator.

    M1 is unsupervised: it cannot classify (``can_classify`` is False) and its samples
    have no class. It is the first stage of ``m1-m2``, and a trained ``m1`` run can be
    that model's M1 (``--m1 RUN``).
    """

    name = "m1"
    # Kingma et al. train M1 to convergence at a constant learning rate. The library's
    # 0.9-per-epoch decay leaves it 2e-6 of its rate after 60 short epochs, with every unit
    # collapsed (digits, 8 steps an epoch: no active unit, M1+M2 at 55%; constant: 84%).
    fit_defaults: ClassVar[dict[str, Any]] = {"lr_decay": 1.0}
    config_class = M1Config
    label_in_joint = False

    def __init__(self, config: M1Config, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        # p(z)'s device and dtype (StandardNormalPrior); M1 has no class prior of its own.
        self.register_buffer("prior", torch.full((c.num_classes,), 1.0 / c.num_classes))
        self.p_x = Decoder(
            c.z_dim, c.hidden[::-1], c.input_dim, c.likelihood, c.sigma2, c.activation
        )
        self.q = EncoderGuide(self.latent_guide("z", c.z_dim, {"x": c.input_dim}))
        self._initialise()

    objective_family = REPARAMETERISED
    default_objective = "trace_mean_field"

    def make_elbo(
        self, objective: str | None = None, num_particles: int = 1, **kwargs: Any
    ) -> ELBO:
        return build_elbo(self.name, REPARAMETERISED, objective, num_particles,
                          default=self.default_objective, **kwargs)  # fmt: skip

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x, _ = self.check_batch(x, y)
        pyro.module(f"{self.name}.p", self.p_x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x(z), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.q", self.q)
        self.q(x, y)

    # -- no classifier -------------------------------------------------------------------
    @property
    def can_classify(self) -> bool:
        return False

    @property
    def generates_by_class(self) -> bool:
        return False

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        raise UserError(
            "m1 is an unsupervised VAE and cannot classify; train m1-m2 (M2 on M1's "
            "latent means) for a classifier"
        )

    def classify(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        return self._class_probs(x)

    # -- the latent space ------------------------------------------------------------------
    @torch.no_grad()
    def latent_mean(self, x: torch.Tensor, samples: int = 32) -> torch.Tensor:
        """``E_q[z|x]`` per row, ``(N, z_dim)``: the Gaussian's mean, or for a guide family
        without a closed-form mean the average of ``samples`` draws seeded by 0."""
        x = self.check_x(x)
        return posterior_mean(self.q.q_z(x=x), x.device, samples)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """``p(x|z)`` for latent codes ``(N, z_dim)``; y does not enter the decoder."""
        z = torch.as_tensor(z, dtype=self.prior.dtype, device=self.device)
        return self.p_x(z)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        if y is not None:
            raise UserError("m1 is unsupervised: its samples have no class; call sample(n)")
        self.check_y(0, n, sampling=True)  # checks n
        if n == 0:
            return torch.zeros((0, self.config.input_dim), device=self.device)
        p_x = self.p_x(self.p_z((n,)).sample())
        return p_x.mean if mean else p_x.sample()


def posterior_mean(q: dist.Distribution, device: torch.device, samples: int = 32) -> torch.Tensor:
    """A guide distribution's mean, or for a family without a closed form (flows) the
    average of ``samples`` draws seeded by 0, so it is a deterministic function of x."""
    try:
        return q.mean
    except (NotImplementedError, AttributeError):
        return seeded_sample(q, samples, device).mean(0)
