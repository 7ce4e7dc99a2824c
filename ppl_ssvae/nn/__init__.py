"""Networks: every one is a module whose ``forward`` returns a distribution, with one call
convention (``q_y(x)``, ``q_z(x=x, y=y)``, ``p_x(z, y)``), so that any guide component fits
any model.

Conditional networks share one first layer, :class:`ContextEncoder`: they never concatenate
``[x, onehot(y)]``; their first layer is ``W_x x + W_y y`` with ``W_x x`` computed once per
row and ``W_y y`` an embedding lookup that broadcasts over an enumerated label dimension.
Guide families for the continuous latents (Gaussians, flows) are heads on that encoder
(:mod:`ppl_ssvae.guides.registry`). ``layers``: activations, ``mlp``, initialisation;
``likelihoods``: p(x|.) heads; ``context``: the context encoder and the heads on it;
``conv``: the conv trunk and deconvolutional decoder; ``nets``: network families by name
(``net = "dense" | "conv"`` in a model's config). The pi-VAE's unconditional nets live
beside it (:mod:`ppl_ssvae.models.pi_vae_nets`).
"""

from .context import (
    LABEL,
    CategoricalHead,
    Conditional,
    ConditionalDecoder,
    ConditionalGaussian,
    ContextEncoder,
    Decoder,
    DiagonalGaussian,
    LabelConditionedTrunk,
    LabelGaussian,
    MultiInputCategorical,
    MultiInputGaussian,
)
from .conv import ConvTrunk, DeconvDecoder
from .layers import (
    ACTIVATIONS,
    INIT_LAYERS,
    MIN_SCALE,
    activation,
    check_init_layers,
    eval_mode,
    full_precision,
    head,
    init_normal_,
    keep_init,
    mlp,
    output_width,
)
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    BernoulliPixels,
    GaussianLikelihood,
    likelihood,
    output_distribution,
    output_params,
)
from .nets import NETS, NetFamily, describe_nets, register_net, resolve_net_args

__all__ = ["ACTIVATIONS", "LIKELIHOODS", "NETS", "ConvTrunk", "DeconvDecoder", "NetFamily", "describe_nets", "register_net", "resolve_net_args", "BernoulliLikelihood", "BernoulliPixels", "CategoricalHead", "Conditional", "ConditionalDecoder", "ConditionalGaussian", "ContextEncoder", "Decoder", "DiagonalGaussian", "GaussianLikelihood", "INIT_LAYERS", "LABEL", "LabelConditionedTrunk", "LabelGaussian", "MIN_SCALE", "MultiInputCategorical", "MultiInputGaussian", "activation", "check_init_layers", "eval_mode", "full_precision", "head", "init_normal_", "keep_init", "likelihood", "mlp", "output_distribution", "output_params", "output_width"]  # fmt: skip
