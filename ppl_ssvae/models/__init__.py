"""Model registry: every model family by its CLI name."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .adgm import ADGM, ADGMConfig
from .agmdgm import AGMDGM, AGMDGMConfig
from .base import ModelConfig, SemiSupervisedModel
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
}


def build(name: str, **config: Any) -> SemiSupervisedModel:
    """Build a model by registry name from its config fields."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[name]
    return cls(cls.config_class.from_dict(config))


def from_config(values: dict[str, Any]) -> SemiSupervisedModel:
    """Rebuild a model from ``model.to_config()``."""
    return build(values["model"], **{k: v for k, v in values.items() if k != "model"})


__all__ = [
    "ADGM",
    "AGMDGM",
    "GMDGM",
    "ADGMConfig",
    "AGMDGMConfig",
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
