"""Weights on named sites of the objective, changed while training runs.

A KL warm-up (Sønderby et al. 2016; cyclical: Fu et al. 2019) multiplies the continuous
latents' terms ``log p(z|.) - log q(z|.)`` by a weight beta that grows from 0 to 1; a
schedule of the classifier weight multiplies the guide's ``classification`` factor
(``alpha log q(y|x)`` on labelled rows). Both are one Pyro messenger around the step that
scales the named sites in the model and the guide alike, so the objective stays Pyro's
own (``TraceEnum_ELBO`` sums the label exactly as before) and only the weights change.
"""

from __future__ import annotations

from typing import Any

from pyro.poutine.messenger import Messenger


class SiteScales(Messenger):
    """Multiply the log-density of every site named in ``weights`` by its weight."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights: dict[str, float] = dict(weights or {})

    def _process_message(self, msg: dict[str, Any]) -> None:
        weight = self.weights.get(msg["name"])
        if weight is not None:
            msg["scale"] = weight * msg["scale"]
