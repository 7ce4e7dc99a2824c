"""Kingma et al. (2014) M1+M2, the stacked model of sec 3.2: an M2 whose data are the latent
codes z1 of an M1 trained on every row, in two training stages."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO

from ..errors import UserError
from ..guides.categorical_gaussian import classification_factor, sample_latent_label
from ..guides.registry import CUSTOM, DEFAULT
from ..guides.sampling import seeded_rng
from .base import DATA_PLATE, GuideModules, ModelConfig, SemiSupervisedModel, _mean_of, split_labels
from .m1 import M1, M1Config, posterior_mean
from .m2 import M2, M2Config

# What M2 reads from M1 in stage 2 (``m2_input``).
M2_INPUTS = ("mean", "sample")
STAGES = ("m1", "m2")


@dataclasses.dataclass
class M1M2Config(ModelConfig):
    """M1+M2 hyper-parameters; defaults follow Kingma et al. sec 4.1 (M1: two hidden layers
    of 600 and z1 of 50; M2 on z1: one hidden layer of 500 and z2 of 50). ``likelihood``,
    ``hidden``, ``z_dim`` and ``sigma2`` are M1's; ``guide`` is the family of q(z1|x) and
    of q(z2|z1, y) alike.

    Attributes:
        z_dim: size of M1's latent z1, the features M2 models.
        hidden: M1's hidden layers (its decoder mirrors them).
        sigma2: M1's fixed pixel variance for ``likelihood="gaussian"`` (None = learned).
        z2_dim: size of M2's latent z2; None: ``z_dim`` (50 and 50 in Kingma et al.).
        m2_hidden: M2's hidden layers.
        m2_sigma2: variance of M2's Gaussian p(z1|y, z2) (None = learned per unit).
        alpha: weight of M2's classification term alpha * log q(y|z1) per labelled row.
        prior: class prior p(y); uniform when None.
        m2_input: what M2 reads of M1 in stage 2: ``"mean"``, the posterior mean E_q[z1|x]
            (Kingma's), or ``"sample"``, a fresh draw z1 ~ q(z1|x) per step. The classifier
            reads the mean either way.
        m1_epochs: the training epochs of stage 1 (M1 alone); the later epochs train M2.
            ``epochs`` counts both stages. Ignored with ``m1``.
        m1: a trained ``m1`` run directory whose best weights are M1's: stage 1 is then
            skipped and every epoch trains M2 (the run is checked and recorded by fit).
    """

    z_dim: int = 50
    hidden: tuple[int, ...] = (600, 600)
    activation: str = "relu"
    sigma2: float | None = 1.0
    z2_dim: int | None = None
    m2_hidden: tuple[int, ...] = (500,)
    m2_sigma2: float | None = 1.0
    alpha: float = 100.0
    prior: tuple[float, ...] | None = None
    m2_input: str = "mean"
    m1_epochs: int = 100
    m1: str | None = None

    may_be_zero: ClassVar[frozenset[str]] = frozenset({"alpha", "dropout", "m1_epochs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m2_input not in M2_INPUTS:
            raise UserError(
                f"M1M2Config.m2_input must be one of {', '.join(M2_INPUTS)}, got {self.m2_input!r}"
            )


class M1M2(SemiSupervisedModel):
    r"""Kingma's stacked M1+M2 (Kingma et al. 2014 sec 3.2).

    Generative story, M2's on M1's latent (the whole model; ``sample`` draws from it)::

        y  ~ Cat(pi)                    p(y)
        z2 ~ N(0, I)                    p(z2)
        z1 ~ p_theta(z1 | y, z2)        Gaussian (M2's decoder, on M1's features)
        x  ~ p_theta(x | z1)            Bernoulli, or Gaussian (M1's decoder)

    Guide: ``q(z1|x) q(y|z1) q(z2|z1, y)``; ``q(z1|x)`` is M1's encoder, ``q(y|z1)`` and
    ``q(z2|z1, y)`` M2's, each latent of the config's guide family.

    Training (``fit``), in two stages chosen by the epoch (``training_stage``):

    1. epochs 1..``m1_epochs``: M1 alone on every row (labels ignored), with p(z1) = N(0, I)::

           J1 = sum_n E_q(z1|x_n)[log p(x_n|z1) + log p(z1) - log q(z1|x_n)]

    2. later epochs: M2 on the features f(x) = E_q[z1|x] (or a draw, ``m2_input``) of the
       frozen M1, Kingma eq. 9 with z1 for x::

           J2 = sum_labelled [L(f, y) + alpha log q(y|f)] + sum_unlabelled U(f)

       Here z1 is the guide's point mass at f, so ``log q`` adds 0 and the loss is M2's.

    The epoch's ``train_loss`` is its stage's loss. Outside a stage (a plain ``svi.step``,
    each epoch's evaluation, e.g. the validation ``elbo``) the objective is the whole
    model's ELBO with z1 ~ q(z1|x); its IWAE estimate (``ppl_ssvae.evaluation.likelihood``)
    is therefore a bound on the stacked model's log p(x), whose p(z1) is M2's
    ``sum_y int p(y) p(z2) p(z1|y, z2) dz2``, with the guide's q(z1|x) as proposal.

    Classifier: ``q(y | z1 = E_q[z1|x])``, M2's classifier on M1's posterior mean.

    ``m1 = RUN`` (``--m1 RUN``) makes a trained ``m1`` run's weights M1's: ``fit`` copies
    them before the first step and records the run; every epoch then trains M2.
    """

    name = "m1-m2"
    # Kingma et al. train M1 to convergence at a constant learning rate. The library's
    # 0.9-per-epoch decay leaves it 2e-6 of its rate after 60 short epochs, with every unit
    # collapsed (digits, 8 steps an epoch: no active unit, M1+M2 at 55%; constant: 84%).
    fit_defaults: ClassVar[dict[str, Any]] = {"lr_decay": 1.0}
    config_class = M1M2Config
    # q(z1|x): a custom module stands for M1's encoder; q(z2|.) keeps the default family.
    guide_latents = ("z",)
    # Config field -> (submodule, the model a run named there must hold), loaded by fit.
    parts_from_runs = {"m1": ("m1", "m1")}
    trains_in_stages = True
    # q(y|z1) reads a sampled z1, so a vectorised particle plate makes its logits
    # (P, B, K), into which the point mass at an observed label cannot scatter (B, 1).
    vectorize_particles = False

    def make_elbo(
        self, objective: str | None = None, num_particles: int = 1, **kwargs: Any
    ) -> ELBO:
        # Stage 1 (M1 alone) enumerates nothing; that is no reason for a warning per step.
        kwargs.setdefault("strict_enumeration_warning", False)
        return super().make_elbo(objective, num_particles, **kwargs)

    def __init__(self, config: M1M2Config, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = self.config
        family = (
            {"guide": DEFAULT, "guide_args": {}}
            if c.guide == CUSTOM
            else {"guide": c.guide, "guide_args": c.guide_args}
        )
        shared = {"num_classes": c.num_classes, "init_std": c.init_std,
                  "init_layers": c.init_layers, "activation": c.activation, **family}  # fmt: skip
        self.m1 = M1(
            M1Config(input_dim=c.input_dim, likelihood=c.likelihood, z_dim=c.z_dim,
                     hidden=c.hidden, sigma2=c.sigma2, **shared),
            guide=self._custom_guides.get("z"),
        )  # fmt: skip
        self.m2 = M2(M2Config(input_dim=c.z_dim, likelihood="gaussian", z_dim=c.z2_dim or c.z_dim,
                              hidden=c.m2_hidden, sigma2=c.m2_sigma2, alpha=c.alpha,
                              prior=c.prior, **shared))  # fmt: skip
        # None: the whole model's objective; "m1" / "m2": a training stage's.
        self.stage: str | None = None

    @property
    def q(self) -> torch.nn.Module:
        """M1's guide, q(z1|x) (``q.q_z``); M2's is ``m2.q``."""
        return self.m1.q

    # -- stages ------------------------------------------------------------------------
    def training_stage(self, epoch: int | None) -> bool:
        c = self.config
        trains_m1 = c.m1 is None and c.m1_epochs > 0
        if epoch is None:
            self.stage = None
        elif trains_m1 and epoch <= c.m1_epochs:
            self.stage = "m1"
        else:
            self.stage = "m2"
        return trains_m1 and epoch == c.m1_epochs + 1

    @torch.no_grad()
    def features(self, x: torch.Tensor, draw: bool = False) -> torch.Tensor:
        """What M2 reads of rows ``x`` (checked): ``E_q[z1|x]`` (``(N, z_dim)``; seeded
        draws averaged for a family without a closed-form mean), or with ``draw`` one draw
        of ``q(z1|x)``. No gradient reaches M1."""
        q_z1 = self.m1.q.q_z(x=x)
        return q_z1.rsample() if draw else posterior_mean(q_z1, x.device)

    # -- the Pyro pair -----------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        stage = self.stage
        # Every part is registered in every stage; the stage's objective decides which
        # get a gradient, so only those are stepped (and a resumed optimizer finds all).
        pyro.module(f"{self.name}.m1.p", self.m1.p_x)
        pyro.module(f"{self.name}.m2.p", self.m2.p_x)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            if stage == "m1":
                z1 = pyro.sample("z1", self.m1.p_z())
            else:
                y = pyro.sample(
                    "y", dist.Categorical(self.m2.prior), obs=y_filled, obs_mask=observed
                )
                z2 = pyro.sample("z", self.m2.p_z())
                z1 = pyro.sample("z1", self.m2.p_x(z2, y))
            if stage != "m2":
                pyro.sample("x", self.m1.p_x(z1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        stage = self.stage
        pyro.module(f"{self.name}.m1.q", self.m1.q)
        pyro.module(f"{self.name}.m2.q", self.m2.q)
        observed, y_filled = split_labels(y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            if stage == "m2":
                f = self.features(x, draw=self.config.m2_input == "sample")
                z1 = pyro.sample("z1", dist.Delta(f, event_dim=1))
            else:
                z1 = pyro.sample("z1", self.m1.q.q_z(x=x))
            if stage != "m1":  # M2's guide (CategoricalGaussianGuide) on z1
                q_y = self.m2.q.q_y(z1)
                y_latent = sample_latent_label(q_y, observed, y_filled)
                pyro.sample("z", self.m2.q.q_z(x=z1, y=y_latent))
                classification_factor(q_y, observed, y_filled, self.config.alpha)

    # -- prediction --------------------------------------------------------------------
    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.m2.q.class_probs(self.features(x))

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None, mean_samples: int = 64
    ) -> dict[str, Any]:
        """``"y_probs"`` (q(y|E[z1|x])), ``"z1"`` (q(z1|x)) and ``"z1_mean"`` (M1's features),
        and M2's ``"z"`` (q(z2|E[z1|x], y*)) and ``"z_mean"``, with ``y*`` the given label
        where ``y >= 0``, else the most probable class."""
        x = self.check_x(x)
        y_probs = self.classify(x)
        labels = y_probs.argmax(-1)
        if y is not None:
            given = self.check_y(torch.as_tensor(y), len(x))
            labels = torch.where(given >= 0, given, labels)
        f = torch.cat([self.features(chunk) for chunk in x.split(2048)])
        q_z2 = self.m2.q.q_z(x=f, y=labels)
        with seeded_rng(0, x.device):
            z_mean = _mean_of(q_z2, mean_samples)
        return {"y_probs": y_probs, "z1": self.m1.q.q_z(x=x), "z1_mean": f,
                "z": q_z2, "z_mean": z_mean}  # fmt: skip

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """``p(x | z1 = E[z1|y, z2])``: M2's decoder mean for codes z2 ``(N, z2_dim)`` and
        labels y, through M1's decoder."""
        z = torch.as_tensor(z, dtype=self.m2.prior.dtype, device=self.device)
        return self.m1.p_x(self.m2.p_x(z, torch.as_tensor(y, device=self.device)).mean)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """``x`` through both decoders: y ~ p(y) (or the given class), z2 ~ p(z2),
        z1 ~ p(z1|y, z2), x ~ p(x|z1) (its mean with ``mean``)."""
        y_checked = self.check_y(0 if y is None else y, n, sampling=True)
        if n == 0:
            return torch.zeros((0, self.config.input_dim), device=self.device)
        if y is None:
            y_checked = dist.Categorical(self.m2.prior).sample((n,))
        p_x = self.m1.p_x(self.m2.p_x_given_y(y_checked).sample())
        return p_x.mean if mean else p_x.sample()
