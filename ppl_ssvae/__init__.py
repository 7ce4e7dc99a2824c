"""ppl-ssvae: semi-supervised deep generative models in Pyro."""

__version__ = "0.1.0"
