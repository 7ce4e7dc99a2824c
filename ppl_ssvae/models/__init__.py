"""Model registry: every model family by its CLI name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError, is_int
from ..guides.registry import DEFAULT
from ..memory import check_model_size, meta_build, meta_elements
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
            :data:`ppl_ssvae.guides.GUIDES`, with ``guide_args=`` in ``config``), or a
            module used as q(z|.) (called as ``module(x=..., y=..., a=...)``), or for
            models with an auxiliary latent ``{"z": module, "a": module}``. A model built
            with modules records ``guide: "custom"`` in ``to_config()``.
        config: the model's config fields.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[name]

    def make() -> SemiSupervisedModel:
        if isinstance(guide, str):
            return cls(cls.config_class.from_dict({**config, "guide": guide}))
        return cls(cls.config_class.from_dict(config), guide=guide)

    _check_memory(cls, make, config)
    return make()


def from_config(values: dict[str, Any], guide: GuideModules | None = None) -> SemiSupervisedModel:
    """Rebuild a model from ``model.to_config()``; a ``"custom"`` guide needs ``guide=`` with
    the same module(s) again."""
    if values.get("model") not in MODELS:
        raise UserError(f"unknown model {values.get('model')!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[values["model"]]
    _check_memory(cls, lambda: cls.from_config(values, guide=guide), values)
    return cls.from_config(values, guide=guide)


def _check_memory(cls: type[SemiSupervisedModel], make: Callable, values: dict[str, Any]) -> None:
    """Refuse sizes whose weights cannot fit in memory before allocating them (a crafted
    config.json or a flag such as ``--hidden 2000000000``): the model is built on the meta
    device and its weights counted (``ppl_ssvae.memory.meta_build``)."""
    # A guide that cannot be built there (a flow's masks) is counted as its Gaussian base.
    base = {k: v for k, v in values.items() if k not in ("model", "guide", "guide_args")}
    module = meta_build(make, lambda: cls(cls.config_class.from_dict(base)))
    if module is None:  # said in a warning
        return
    sizes = ", ".join(
        f"{k}={list(v) if isinstance(v, (list, tuple)) else v}"
        for k, v in module.config.to_dict().items()
        if is_int(v) or (isinstance(v, (list, tuple)) and v and all(is_int(i) for i in v))
    )  # fmt: skip
    check_model_size(meta_elements(module), f"{cls.name}: {sizes}")


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
