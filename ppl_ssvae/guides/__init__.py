"""Amortized guides. Each has the same site names as the model it serves."""

from .categorical_gaussian import CategoricalGaussianGuide

__all__ = ["CategoricalGaussianGuide"]
