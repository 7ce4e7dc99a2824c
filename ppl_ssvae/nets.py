"""Deprecated: ``ppl_ssvae.nets`` was split into :mod:`ppl_ssvae.nn` (layers, likelihoods,
the context encoder and its heads) and :mod:`ppl_ssvae.models.pi_vae_nets` (the pi-VAE's
networks). Kept for one release, with a ``DeprecationWarning``."""

import warnings

from .models.pi_vae_nets import *  # noqa: F403
from .nn import *  # noqa: F403

warnings.warn(
    "ppl_ssvae.nets is deprecated; import from ppl_ssvae.nn (or ppl_ssvae.models.pi_vae_nets)",
    DeprecationWarning,
    stacklevel=2,
)
