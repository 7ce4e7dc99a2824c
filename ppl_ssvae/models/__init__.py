"""Model registry: every model family by its CLI name."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import ModelConfig, SemiSupervisedModel
from .m2 import M2, M2Config

MODELS: dict[str, type[SemiSupervisedModel]] = {
    M2.name: M2,
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


__all__ = ["M2", "MODELS", "M2Config", "ModelConfig", "SemiSupervisedModel", "build", "from_config"]
