"""Model registry: every model family by its CLI name."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..guides.registry import DEFAULT, trusted_guide_modules
from .adgm import ADGM, ADGMConfig
from .agmdgm import AGMDGM, AGMDGMConfig
from .base import GuideModules, ModelConfig, SemiSupervisedModel
from .beta_vae_classifier import BetaVAEClassifier, BetaVAEClassifierConfig
from .gmdgm import GMDGM, GMDGMConfig
from .latent_classifier import LatentClassifier, LatentClassifierConfig, SimplifiedLatentClassifier
from .m2 import M2, M2Config
from .pi_vae import PiVAE, PiVAEConfig
from .priors import semi_unsupervised_prior

MODELS: dict[str, type[SemiSupervisedModel]] = {
    M2.name: M2,
    ADGM.name: ADGM,
    GMDGM.name: GMDGM,
    AGMDGM.name: AGMDGM,
    LatentClassifier.name: LatentClassifier,
    SimplifiedLatentClassifier.name: SimplifiedLatentClassifier,
    PiVAE.name: PiVAE,
    BetaVAEClassifier.name: BetaVAEClassifier,
}


def build(name: str, guide: str | GuideModules = DEFAULT, **config: Any) -> SemiSupervisedModel:
    """Build a model by registry name from its config fields.

    Args:
        name: a key of :data:`MODELS`.
        guide: the posterior family of the guide's continuous latents by name (a key of
            :data:`ppl_ssvae.guides.GUIDES`, or a head function's import path
            ``"pkg.module:factory"``, with ``guide_args=`` in ``config``), or a
            module used as q(z|.) (called as ``module(x=..., y=..., a=...)``), or for
            models with an auxiliary latent ``{"z": module, "a": module}``. A model built
            with modules records ``guide: "custom"`` in ``to_config()``.
        config: the model's config fields.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[name]
    if isinstance(guide, str):
        # A guide named here by import path is the caller's own: its module may be imported.
        with trusted_guide_modules(guide):
            return cls(cls.config_class.from_dict({**config, "guide": guide}))
    return cls(cls.config_class.from_dict(config), guide=guide)


def from_config(values: dict[str, Any], guide: GuideModules | None = None) -> SemiSupervisedModel:
    """Rebuild a model from ``model.to_config()``; a ``"custom"`` guide needs ``guide=`` with
    the same module(s) again."""
    if values.get("model") not in MODELS:
        raise UserError(f"unknown model {values.get('model')!r}; choose one of {', '.join(MODELS)}")
    return MODELS[values["model"]].from_config(values, guide=guide)


__all__ = [
    "ADGM",
    "AGMDGM",
    "GMDGM",
    "ADGMConfig",
    "AGMDGMConfig",
    "BetaVAEClassifier",
    "BetaVAEClassifierConfig",
    "GMDGMConfig",
    "LatentClassifier",
    "LatentClassifierConfig",
    "SimplifiedLatentClassifier",
    "semi_unsupervised_prior",
    "M2",
    "MODELS",
    "M2Config",
    "ModelConfig",
    "PiVAE",
    "PiVAEConfig",
    "SemiSupervisedModel",
    "build",
    "from_config",
]
