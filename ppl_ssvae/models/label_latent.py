"""The two shapes of model whose label is a latent: ``y`` and ``z`` (M2, GM-DGM; Kingma et
al. 2014 eqs. 6-9) and ``y``, ``z`` with an auxiliary ``a`` (ADGM, AGM-DGM; Maaløe et al.
2016). They share the label guide q(y|x) (or q(y|a, x)), classification by it and class-
conditional sampling."""

from __future__ import annotations

from abc import abstractmethod

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..errors import UserError
from ..guides.auxiliary import AuxiliaryGuide
from ..guides.categorical_gaussian import CategoricalGaussianGuide
from ..nn import (
    MultiInputCategorical,
    MultiInputGaussian,
)
from .base import GuideModules, SemiSupervisedModel
from .config import ModelConfig
from .networks import NetsByName
from .priors import class_prior


class LabelLatentModel(NetsByName, SemiSupervisedModel):
    """Models whose label is a categorical latent of the generative model: M2, ADGM,
    GM-DGM, AGM-DGM (Willetts et al. sec 3-5).

    They share a class prior p(y) (the ``prior`` buffer, from ``config.prior``), a guide
    module ``self.q`` called as ``q(x, y, classifier_weight=config.alpha)`` that enumerates
    the latent label, and class-conditional generation through ``p_x_given_y``. Their
    networks are the config's ``net`` family (:class:`~ppl_ssvae.models.networks.NetsByName`).
    """

    q: nn.Module
    label_is_latent = True
    reconstruction_scorer = "label_latent"

    def __init__(self, config: ModelConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        self.register_buffer("prior", class_prior(config.num_classes, config.prior))

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.q", self.q)
        self.q(x, y, classifier_weight=self.config.alpha)

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.q.class_probs(x)

    def label_guide(self) -> nn.Module:
        """``q(y, z|x) = q(y|x) q(z|x, y)`` (Kingma eq. 5-7, Willetts eq. 5-7), z of the
        config's family: the guide of M2 and GM-DGM."""
        c = self.config
        return CategoricalGaussianGuide(
            q_y=self.x_classifier(),
            q_z=self.latent_guide("z", c.z_dim, {"x": c.input_dim, "y": c.num_classes}),
        )

    @abstractmethod
    def p_x_given_y(self, y: torch.Tensor) -> dist.Distribution:
        """``p(x|y)`` for a batch of labels, with the other latents drawn from the prior."""

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        # With y=None, class 0 stands in so that n is checked all the same.
        y_checked = self.check_y(0 if y is None else y, n, sampling=True)
        if y is None and n:  # Categorical cannot draw 0 samples
            y_checked = dist.Categorical(self.prior).sample((n,))
        p_x = self.p_x_given_y(y_checked)
        return p_x.mean if mean else p_x.sample()


class AuxiliaryLabelLatentModel(LabelLatentModel):
    """Label-latent models with an auxiliary latent ``a`` (ADGM, AGM-DGM; Willetts sec 3.3).

    Shared: the guide ``q(a, y, z|x) = q(z|a, y, x) q(y|a, x) q(a|x)`` (eq. 17-20) with the
    config's family for both ``a`` and ``z``, the Gaussian ``p(a|x, y, z)`` (eq. 16), the
    classifier ``(1/N_s) sum_i q(y|a_i, x)`` (eq. 23/33) and sequential particles.
    """

    guide_latents = ("z", "a")
    # The guide's point mass at the observed label (sample_latent_label) scatters a (B, 1)
    # index into q(y|a, x)'s logits, which a vectorised particle plate makes (P, B, K).
    vectorize_particles = False

    def __init__(self, config: ModelConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        if config.classify_samples < 1:
            raise UserError("classify_samples must be at least 1")

    def auxiliary_prior(self) -> nn.Module:
        """``p(a|x, y, z)``, Gaussian (eq. 16): eq. 16's Bernoulli alternative cannot score
        the real-valued ``a`` drawn from q(a|x). Called as ``p_a(x=x, z=z, y=y)``."""
        c = self.config
        inputs = {"x": c.input_dim, "z": c.z_dim, "y": c.num_classes}
        return MultiInputGaussian(inputs, c.hidden, c.a_dim, c.activation,
                                  self.input_trunks(inputs))  # fmt: skip

    def auxiliary_guide(self) -> nn.Module:
        c = self.config
        x_a = {"x": c.input_dim, "a": c.a_dim}
        return AuxiliaryGuide(
            q_a=self.latent_guide("a", c.a_dim, {"x": c.input_dim}),
            q_y=MultiInputCategorical(
                x_a, c.hidden, c.num_classes, c.activation, self.input_trunks(x_a)
            ),
            q_z=self.latent_guide("z", c.z_dim, {**x_a, "y": c.num_classes}),
        )

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.q.class_probs(x, self.config.classify_samples)
