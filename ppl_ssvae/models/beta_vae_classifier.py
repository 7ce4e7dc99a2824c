"""Vengalil & Sinha's beta-VAE with a softmax classifier on its latent, trained on
weighted labels (sec 3.2-3.3, eq. 1 and 4): the model of the active-labelling loop."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO

from ..errors import UserError
from ..guides.encoder import EncoderGuide
from ..guides.sampling import seeded_sample
from ..nn import CategoricalHead
from ..objectives import REPARAMETERISED, build_elbo
from .base import DATA_PLATE, SemiSupervisedModel
from .config import NetConfig
from .networks import NetsByName
from .priors import StandardNormalPrior

# Draws of q(z|x) averaged when a guide family has no closed-form mean (flows).
_MEAN_SAMPLES = 32
# Proposals from p(z) per draw when sampling z ~ p(z|y) by importance resampling.
_SIR_PROPOSALS = 256


@dataclasses.dataclass
class BetaVAEClassifierConfig(NetConfig):
    """Hyper-parameters. The paper gives no sizes for its dense layers or its latent, nor
    values for beta and gamma; these defaults are ours. Its networks are chosen by name
    (``net``): the paper's is ``"conv"`` (one down-sampling convolution under the encoder's
    dense layers, one up-sampling deconvolution over the decoder's), the default dense.

    Attributes:
        beta: weight of KLD(q(z|x), N(0, I)) in eq. 1 (> 0; 1 is the plain VAE).
        gamma: weight of the weighted cross-entropy of eq. 4 (0 turns it off).
        classifier_hidden: hidden layers of p(y|z); () is the paper's single softmax layer.
        sigma2: fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
    """

    z_dim: int = 10
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    beta: float = 1.0
    gamma: float = 10.0
    classifier_hidden: tuple[int, ...] = ()
    sigma2: float | None = 1.0

    # beta scales the z sites, and Pyro refuses a scale of 0; gamma may be 0.
    may_be_zero: ClassVar[frozenset[str]] = frozenset({"gamma", "dropout"})


class BetaVAEClassifier(NetsByName, StandardNormalPrior, SemiSupervisedModel):
    r"""A beta-VAE with a classification head p(y|z) on its latent (Vengalil & Sinha, Fig. 1).

    Generative story::

        z ~ N(0, I)                 p(z)
        x ~ Bernoulli(f_theta(z))   p(x|z), or Gaussian with fixed sigma^2
        y ~ Cat(softmax(W z + b))   p(y|z), the classifier (only on weighted rows)

    Loss, minimised (eq. 1 and 4), over a batch of rows n with label weights w_n::

        L = sum_n [ -log p(x_n|z_n) + beta KLD(q(z|x_n), N(0, I)) ]      eq. 1
            - gamma sum_n w_n log p(y_n|z_n),    z_n ~ q(z|x_n)          eq. 4

    The KL term is analytic (the default objective is ``trace_mean_field``), as in eq. 1.

    Labels: ``y`` is either the library's ``(B,)`` class ids (``-1`` = unlabelled; a
    labelled row has weight 1) or **weighted labels** ``(B, 2)`` floating:
    ``[class id or -1, w_n >= 0]``. A row of weight 0 is masked out of the
    cross-entropy (not merely multiplied by 0, so a -inf log-probability cannot make
    NaN). Weights are never negative, so ``SemiSupervisedBatches`` puts every weighted row
    in one pool and an epoch is one shuffled pass over the training set, as in the paper.

    Pyro form: beta is a ``poutine.scale`` on the z site in model and guide alike (the
    ELBO's z terms are ``log p(z) - log q(z|x)``); ``gamma * w`` scales the observed y site.

    Classifier: ``p(y | z = E_q[z|x])``, the latent mean, which is also what the active
    loop clusters; deterministic, with no RNG drawn.
    """

    name = "beta-vae-classifier"
    config_class = BetaVAEClassifierConfig

    def __init__(self, config: BetaVAEClassifierConfig, guide: Any = None) -> None:
        super().__init__(config, guide)
        c = self.config
        self.register_buffer("prior", torch.full((c.num_classes,), 1.0 / c.num_classes))
        self.p_y = CategoricalHead(c.z_dim, c.classifier_hidden, c.num_classes, c.activation)
        self.p_x = self.net_decoder({"z": c.z_dim})
        self.q = EncoderGuide(self.latent_guide("z", c.z_dim, {"x": c.input_dim}))
        self._initialise()

    def make_elbo(
        self, objective: str | None = "trace_mean_field", num_particles: int = 1, **kwargs: Any
    ) -> ELBO:
        return build_elbo(
            self.name,
            REPARAMETERISED,
            objective,
            num_particles,
            default="trace_mean_field",
            **kwargs,
        )

    # -- labels ------------------------------------------------------------------------
    def check_y(self, y: torch.Tensor, n: int, *, sampling: bool = False) -> torch.Tensor:
        """Class ids ``(n,)`` as for every model, or weighted labels ``(n, 2)``."""
        if sampling or not (isinstance(y, torch.Tensor) and y.dim() == 2):
            return super().check_y(y, n, sampling=sampling)
        k = self.config.num_classes
        if y.shape != (n, 2) or not y.dtype.is_floating_point:
            raise UserError(
                f"weighted labels have shape {tuple(y.shape)} ({y.dtype}) for {n} rows; "
                f"expected ({n}, 2) floating: [class id 0..{k - 1} or -1, weight >= 0]"
            )
        labels, weights = y[:, 0], y[:, 1]
        if not torch.isfinite(y).all() or (weights < 0).any():
            raise UserError("label weights must be finite and >= 0")
        if (labels != labels.round()).any() or (labels < -1).any() or (labels >= k).any():
            raise UserError(f"weighted labels' class ids must be whole numbers in -1..{k - 1}")
        return y.to(self.device, self.prior.dtype)

    @staticmethod
    def label_weights(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class ids with -1 -> 0, w_n)`` of checked labels; unlabelled rows get w = 0."""
        if y.dim() == 1:
            return y.clamp(min=0), (y >= 0).to(torch.get_default_dtype())
        labels = y[:, 0].long()
        return labels.clamp(min=0), torch.where(labels >= 0, y[:, 1], 0.0)

    # -- the Pyro pair -----------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.p_y", self.p_y)
        pyro.module(f"{self.name}.p_x", self.p_x)
        labels, weights = self.label_weights(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            with poutine.scale(scale=self.config.beta):
                z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x(z), obs=x)
            # eq. 4: gamma * w_n * CE(y_n, yhat_n). Rows with gamma * w_n = 0 are masked
            # out; Pyro refuses a scale of 0, so they carry a placeholder scale of 1.
            scale = self.config.gamma * weights.to(z.dtype)
            keep = scale > 0
            with poutine.mask(mask=keep), poutine.scale(scale=torch.where(keep, scale, 1.0)):
                pyro.sample("y", self.p_y(z), obs=labels)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.q", self.q)
        self.q(x, y, row_weights=self.config.beta)

    # -- the latent space (what the active loop clusters and decodes) ------------------------
    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None, mean_samples: int = _MEAN_SAMPLES
    ) -> dict[str, Any]:
        """The base contract's view of ``x``: ``"y_probs"`` (the latent classifier's),
        ``"z"`` (q(z|x); y does not enter it) and ``"z_mean"`` (``(N, z_dim)``, seeded draws
        averaged for guide families without a closed-form mean)."""
        x = self.check_x(x)
        z_mean = torch.cat([self._latent_mean(chunk) for chunk in x.split(2048)])
        return {"y_probs": self.classify(x), "z": self.q.q_z(x=x), "z_mean": z_mean}

    def _latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        q_z = self.q.q_z(x=x)
        try:
            return q_z.mean
        except NotImplementedError:
            return seeded_sample(q_z, _MEAN_SAMPLES, x.device).mean(0)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """``p(x|z)`` for latent codes ``(N, z_dim)``; y does not enter the decoder (the
        base contract's signature). Its ``.mean`` is the images' pixel probabilities."""
        z = torch.as_tensor(z, dtype=self.prior.dtype, device=self.device)
        return self.p_x(z)

    @torch.no_grad()
    def reconstruction_loss(self, x: torch.Tensor, batch_size: int = 2048) -> float:
        """Mean ``-log p(x | z = E_q[z|x])`` per row: eq. 1's reconstruction term (binary
        cross-entropy for a Bernoulli likelihood) at the latent mean, with no noise."""
        x = self.check_x(x)
        total = sum(
            -self.p_x(self._latent_mean(chunk)).log_prob(chunk).sum().item()
            for chunk in x.split(batch_size)
        )
        return total / max(len(x), 1)

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.p_y(self._latent_mean(x)).probs

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        y_checked = self.check_y(0 if y is None else y, n, sampling=True)
        if n == 0:  # torch's distribution checks cannot reshape zero rows
            return torch.zeros((0, self.config.input_dim), device=self.device)
        z = self.p_z((n,)).sample() if y is None else self._z_given_y(y_checked)
        p_x = self.p_x(z)
        return p_x.mean if mean else p_x.sample()

    def _z_given_y(self, y: torch.Tensor) -> torch.Tensor:
        """Draws from p(z|y) ∝ p(y|z) p(z) by sampling-importance-resampling."""
        proposals = self.p_z((_SIR_PROPOSALS, len(y))).sample()  # (M, n, Z)
        log_weights = self.p_y(proposals).log_prob(y)  # (M, n)
        pick = dist.Categorical(logits=log_weights.T).sample()
        return proposals[pick, torch.arange(len(y), device=y.device)]
