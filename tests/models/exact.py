"""Helpers for tests that compare a model's loss with its paper's bound written by hand."""

import torch.distributions as td
from pyro import poutine
from torch.nn import functional as F

from ppl_ssvae.nn import MIN_SCALE


def loss_and_sites(model, x, y, *sites):
    """The model's ELBO loss on ``(x, y)`` and the values its guide drew at ``sites``.

    The guide runs inside the loss computation under an extra trace, so the recorded
    values (e.g. z with its enumerated label dimension) are exactly the noise the loss used.
    """
    seen = {}

    def recording_guide(x, y):
        nodes = poutine.trace(model.guide).get_trace(x, y).nodes
        seen.update({site: nodes[site]["value"] for site in sites})

    loss = model.make_elbo().loss(model.model, recording_guide, x, y)
    return (loss, *(seen[site] for site in sites))


def multi_input_hidden(trunk, inputs, label=None):
    """A ``MultiInputTrunk`` recomputed from its weights:
    ``act(sum_i W_i u_i + W_y onehot(y) + b)``, then the remaining layers."""
    h = sum(
        F.linear(u, layer.weight, layer.bias) for layer, u in zip(trunk.layers, inputs, strict=True)
    )
    if label is not None:
        num_classes = trunk.y_layer.weight.shape[0]
        h = h + F.one_hot(label, num_classes).to(h.dtype) @ trunk.y_layer.weight
    return trunk.rest(trunk.act(h))


def multi_input_gaussian(net, inputs, label=None):
    """A ``MultiInputGaussian`` recomputed from its weights as a torch Normal."""
    h = multi_input_hidden(net.trunk, inputs, label)
    return td.Normal(net.head.loc(h), F.softplus(net.head.scale(h)) + MIN_SCALE)
