"""Helpers for tests that compare a model's loss with its paper's bound written by hand."""

from pyro import poutine


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
