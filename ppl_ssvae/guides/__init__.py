"""Amortized guides. Each has the same site names as the model it serves."""

from .auxiliary import AuxiliaryGuide
from .categorical_gaussian import CategoricalGaussianGuide
from .encoder import EncoderGuide

__all__ = ["AuxiliaryGuide", "CategoricalGaussianGuide", "EncoderGuide"]
