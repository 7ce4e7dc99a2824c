"""Amortized guides. Each has the same site names as the model it serves.

The posterior family of every continuous latent is chosen by name from
:data:`~ppl_ssvae.guides.registry.GUIDES` (``build_latent_guide``).
"""

from .auxiliary import AuxiliaryGuide
from .categorical_gaussian import CategoricalGaussianGuide
from .encoder import EncoderGuide
from .registry import (
    CUSTOM,
    GUIDES,
    GuideFamily,
    build_latent_guide,
    describe_guides,
    guide_names,
    is_import_path,
    legacy_guide_args,
    register_guide,
    resolve_guide_args,
    trusted_guide_modules,
)
from .sampling import seeded_sample

__all__ = [
    "CUSTOM",
    "GUIDES",
    "AuxiliaryGuide",
    "CategoricalGaussianGuide",
    "EncoderGuide",
    "GuideFamily",
    "build_latent_guide",
    "describe_guides",
    "guide_names",
    "register_guide",
    "is_import_path",
    "legacy_guide_args",
    "resolve_guide_args",
    "seeded_sample",
    "trusted_guide_modules",
]
