"""Model registry: every model family by its CLI name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro

from ..errors import UserError, check_seed, is_int
from ..guides.registry import DEFAULT, trusted_guide_modules
from ..memory import check_model_size, meta_build, meta_elements
from .adgm import ADGM, ADGMConfig
from .agmdgm import AGMDGM, AGMDGMConfig
from .base import GuideModules, ModelConfig, SemiSupervisedModel
from .beta_vae_classifier import BetaVAEClassifier, BetaVAEClassifierConfig
from .gmdgm import GMDGM, GMDGMConfig
from .latent_classifier import LatentClassifier, LatentClassifierConfig, SimplifiedLatentClassifier
from .m1 import M1, M1Config
from .m1m2 import M1M2, M1M2Config
from .m2 import M2, M2Config
from .m2_adversarial import AdversarialM2
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
    M1.name: M1,
    M1M2.name: M1M2,
    AdversarialM2.name: AdversarialM2,
}


def register_model(cls: type[SemiSupervisedModel]) -> type[SemiSupervisedModel]:
    """Class decorator: add a researcher's model (a ``SemiSupervisedModel`` subclass with
    ``name`` and ``config_class``) to :data:`MODELS`, so ``build``, ``from_config``,
    ``ppl-ssvae train --model NAME`` and ``ppl_ssvae.testing.check_model`` know it. An
    installed package can also register models through the ``ppl_ssvae.models`` entry
    point group (``name = "package.module:Class"``)."""
    if not (isinstance(cls, type) and issubclass(cls, SemiSupervisedModel)):
        raise UserError(f"register_model takes a SemiSupervisedModel subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not hasattr(cls, "config_class"):
        raise UserError(f"{cls.__name__} needs a class attribute 'name' and a 'config_class'")
    if MODELS.get(name, cls) is not cls:
        raise UserError(f"a model named {name!r} is already registered ({MODELS[name].__name__})")
    MODELS[name] = cls
    return cls


def load_plugins() -> list[str]:
    """Register the models and callbacks that installed packages declare under the entry
    point groups ``ppl_ssvae.models`` and ``ppl_ssvae.callbacks``; their names. Importing
    them runs their code, as installing them allowed; nothing read from a run directory
    is ever imported."""
    from importlib.metadata import entry_points

    loaded = []
    for group in ("ppl_ssvae.models", "ppl_ssvae.callbacks"):
        for point in entry_points(group=group):
            try:
                target = point.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin is named, not fatal
                raise UserError(
                    f"plugin {point.name!r} ({point.value}) failed to load: {e}"
                ) from None
            if group == "ppl_ssvae.models" and target.name not in MODELS:
                register_model(target)
            loaded.append(point.name)
    return loaded


def build(
    name: str, guide: str | GuideModules = DEFAULT, *, seed: int | None = None, **config: Any
) -> SemiSupervisedModel:
    """Build a model by registry name from its config fields.

    Args:
        name: a key of :data:`MODELS`.
        guide: the posterior family of the guide's continuous latents by name (a key of
            :data:`ppl_ssvae.guides.GUIDES`, or a head function's import path
            ``"pkg.module:factory"``, with ``guide_args=`` in ``config``), or a
            module used as q(z|.) (called as ``module(x=..., y=..., a=...)``), or for
            models with an auxiliary latent ``{"z": module, "a": module}``. A model built
            with modules records ``guide: "custom"`` in ``to_config()``.
        seed: draw the initial weights from this seed (what ``ppl-ssvae train --seed``
            does), so the same config and seed give the same weights from Python and the
            CLI; None: from the global RNG as it stands.
        config: the model's config fields.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if seed is not None:
        check_seed(seed)
    cls = MODELS[name]

    def make() -> SemiSupervisedModel:
        if isinstance(guide, str):
            return cls(cls.config_class.from_dict({**config, "guide": guide}))
        return cls(cls.config_class.from_dict(config), guide=guide)

    # A guide named here by import path is the caller's own: its module may be imported.
    with trusted_guide_modules(*([guide] if isinstance(guide, str) else [])):
        _check_memory(cls, make, config)  # on the meta device: no weights, no random draws
        if seed is not None:
            pyro.set_rng_seed(check_seed(seed))
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
    "M1",
    "M1Config",
    "M1M2",
    "M1M2Config",
    "M2",
    "MODELS",
    "M2Config",
    "ModelConfig",
    "PiVAE",
    "PiVAEConfig",
    "SemiSupervisedModel",
    "build",
    "from_config",
    "load_plugins",
    "register_model",
]
