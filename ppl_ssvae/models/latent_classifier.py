"""Jurasiński's latent-classifier model: the classifier is p(y|z) on the VAE's own latent."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..errors import UserError
from ..guides.encoder import EncoderGuide
from ..nn import CategoricalHead
from ..objectives import REPARAMETERISED
from .base import (
    DATA_PLATE,
    GuideModules,
    SemiSupervisedModel,
    seeded_sample,
    split_labels,
)
from .config import NetConfig
from .networks import NetsByName
from .priors import StandardNormalPrior, class_prior

UNLABELLED_BOUNDS = ("thesis", "marginal")
# Proposals from p(z) per draw when sampling z ~ p(z|y) by importance resampling.
_SIR_PROPOSALS = 256
# Floor on prior probabilities before taking logs for the p(y|z) bias.
_MIN_PRIOR = 1e-8


@dataclasses.dataclass
class LatentClassifierConfig(NetConfig):
    """Latent-classifier hyper-parameters; defaults follow Jurasiński App. B (one hidden
    layer of 500, softplus, z = 50) and his best lambda for the full model (Table 1).

    Attributes:
        lam: lambda, the weight of every labelled row's bound L_our (the objective is
            lambda * L_our + U_our); must be positive.
        unlabelled_bound: ``"thesis"`` for Prop. 2's U_our with
            E_p(y|z)[log p(x|y, z)], or ``"marginal"`` for the tighter
            log sum_y p(y|z) p(x|y, z). Both coincide for the simplified model.
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        prior: class prior; this model has no p(y) factor, so it only sets the initial
            bias of p(y|z) to log p(y) (p(y|z) starts near the prior).
        classify_samples: draws z_i ~ q(z|x) averaged by the classifier.
    """

    z_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    activation: str = "softplus"
    lam: float = 0.5
    unlabelled_bound: str = "thesis"
    sigma2: float | None = 1.0
    prior: tuple[float, ...] | None = None
    classify_samples: int = 10


class LatentClassifier(NetsByName, StandardNormalPrior, SemiSupervisedModel):
    r"""Jurasiński's model (sec 4.1, Prop. 1-2): no categorical latent in the guide.

    Generative story::

        z ~ N(0, I)                     p(z)
        y ~ Cat(pi_theta(z))            p(y|z), the classifier
        x ~ p_theta(x | y, z)           Bernoulli, or Gaussian with fixed sigma^2

    Inference: ``q(z|x)`` only (Prop. 1 assumes q(z|x, y) ~= q(z|x)), of the config's
    guide family (diagonal Gaussian by default), or any module passed as ``guide=module``
    and called as ``module(x=x)``; see :class:`~ppl_ssvae.guides.EncoderGuide`.

    Objective, maximised (sec 4.1)::

        J_our   = lambda * sum_labelled L_our(x, y) + sum_unlabelled U_our(x)
        L_our   = E_q(z|x)[log p(x|y,z) + log p(y|z) + log p(z) - log q(z|x)]     Prop. 1
        U_our   = E_q(z|x)[E_p(y|z) log p(x|y,z) + log p(z) - log q(z|x)]         Prop. 2

    With ``unlabelled_bound="marginal"`` the unlabelled term uses the exact
    ``log p(x|z) = log sum_y p(y|z) p(x|y,z)`` instead of its Jensen bound.

    Pyro form: one plate; lambda is a per-row ``poutine.scale`` applied in model and
    guide alike (L_our includes -log q(z|x)). ``y`` is an observed site on labelled
    rows (masked elsewhere); the unlabelled term is a ``pyro.factor`` computed from
    ``p(x|k, z)`` for every k. Model-side enumeration of y would give the marginal form,
    not U_our, so neither form enumerates.

    Classifier: ``p(y|x) ~= (1/N) sum_i p(y|z_i)``, ``z_i ~ q(z|x)``,
    ``N = classify_samples``, drawn with a fixed seed so predictions are repeatable.
    """

    classifier_on_latent = True

    name = "latent"
    # The guide is fully reparameterised, so every objective works.
    objective_family = REPARAMETERISED
    config_class = LatentClassifierConfig

    def __init__(self, config: LatentClassifierConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        if c.unlabelled_bound not in UNLABELLED_BOUNDS:
            raise UserError(
                f"unknown unlabelled_bound {c.unlabelled_bound!r}; choose one of "
                f"{', '.join(UNLABELLED_BOUNDS)}"
            )
        if not c.lam > 0:
            raise UserError(f"lam must be positive; got {c.lam}")
        if c.classify_samples < 1:
            raise UserError("classify_samples must be at least 1")
        prior = class_prior(c.num_classes, c.prior)
        self.register_buffer("prior", prior)
        self.p_y = CategoricalHead(c.z_dim, c.hidden, c.num_classes, c.activation)
        with torch.no_grad():
            self.p_y.net[-1].bias.copy_(self.prior.clamp_min(_MIN_PRIOR).log())
        self.p_x = self._decoder()
        self.q = EncoderGuide(self.latent_guide("z", c.z_dim, {"x": c.input_dim}))
        self._initialise()

    def _decoder(self) -> nn.Module:
        c = self.config
        return self.net_decoder({"z": c.z_dim, "y": c.num_classes})

    def row_weights(self, observed: torch.Tensor) -> torch.Tensor:
        """lambda on labelled rows, 1 on unlabelled rows."""
        return torch.where(observed, self.config.lam, 1.0).to(self.prior.dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p_y", self.p_y)
        pyro.module(f"{self.name}.p_x", self.p_x)
        observed, y_filled = split_labels(y)
        with (
            pyro.plate(DATA_PLATE, x.shape[0]),
            poutine.scale(scale=self.row_weights(observed)),
        ):
            z = pyro.sample("z", self.p_z())
            p_y = self.p_y(z)
            with poutine.mask(mask=observed):
                pyro.sample("y", p_y, obs=y_filled)
            self._observe_x(x, z, p_y, observed, y_filled)

    def _observe_x(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        p_y: dist.Categorical,
        observed: torch.Tensor,
        y_filled: torch.Tensor,
    ) -> None:
        with poutine.mask(mask=observed):
            pyro.sample("x", self.p_x(z, y_filled), obs=x)
        if observed.all():
            return
        # Every class k in a dim left of z's batch dims (particles, rows), moved last.
        labels = torch.arange(self.config.num_classes, device=x.device)
        labels = labels.reshape(-1, *[1] * (z.dim() - 1))
        log_px = self.p_x(z, labels).log_prob(x).movedim(0, -1)  # (..., B, K): log p(x|k, z)
        if self.config.unlabelled_bound == "thesis":
            # Prop. 2: E_p(y|z)[log p(x|y, z)], the looser bound Jurasiński trains on.
            unlabelled = (p_y.probs * log_px).sum(-1)
        else:
            unlabelled = torch.logsumexp(p_y.logits + log_px, -1)
        with poutine.mask(mask=~observed):
            pyro.factor("x_unlabelled", unlabelled)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.q", self.q)
        observed, _ = split_labels(y)
        self.q(x, y, row_weights=self.row_weights(observed))

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        z = seeded_sample(self.q.q_z(x=x), self.config.classify_samples, x.device)
        return self.p_y(z).probs.mean(0)

    def _generate(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(z, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self._generate(z, y)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        # With y=None, class 0 stands in so that n is checked all the same.
        y_checked = self.check_y(0 if y is None else y, n, sampling=True)
        if n == 0:  # torch's distribution checks cannot reshape zero rows
            return torch.zeros((0, self.config.input_dim), device=self.device)
        if y is None:
            z = self.p_z((n,)).sample()
            y = self.p_y(z).sample()
        else:
            y = y_checked
            z = self._z_given_y(y)
        p_x = self._generate(z, y)
        return p_x.mean if mean else p_x.sample()

    def _z_given_y(self, y: torch.Tensor) -> torch.Tensor:
        """Approximate draws from p(z|y) ∝ p(y|z) p(z) by sampling-importance-resampling:
        the model has no p(z|y) to sample directly."""
        proposals = self.p_z((_SIR_PROPOSALS, len(y))).sample()  # (M, n, Z)
        log_weights = self.p_y(proposals).log_prob(y)  # (M, n)
        pick = dist.Categorical(logits=log_weights.T).sample()  # (n,)
        return proposals[pick, torch.arange(len(y), device=y.device)]


class SimplifiedLatentClassifier(LatentClassifier):
    r"""The simplified latent classifier (Jurasiński sec 4.1, last paragraph).

    Adds the assumption ``p(x, y|z) ~= p(x|z) p(y|z)``: the decoder no longer sees y.
    The bounds become::

        L_our = E_q(z|x)[log p(x|z) + log p(y|z) + log p(z) - log q(z|x)]
        U_our = E_q(z|x)[log p(x|z) + log p(z) - log q(z|x)]

    (``E_p(y|z) log p(x|z) = log p(x|z)``, so ``unlabelled_bound`` makes no difference),
    i.e. a VAE on all rows plus lambda * log p(y|z) on labelled rows.
    """

    name = "latent-simplified"
    vectorize_particles = True  # no per-class decoder pass here

    def _decoder(self) -> nn.Module:
        return self.net_decoder({"z": self.config.z_dim})

    def _observe_x(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        p_y: dist.Categorical,
        observed: torch.Tensor,
        y_filled: torch.Tensor,
    ) -> None:
        pyro.sample("x", self.p_x(z), obs=x)

    def _generate(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.p_x(z)
