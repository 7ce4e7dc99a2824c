"""The networks of a model whose config names them (``net``, ``net_args``): the parts that
read x get the family's trunk, and the decoder is the family's.

Every part builds its own trunk (as q(y|x) and q(z|x, y) have their own dense layers),
and each trunk runs once per data row: inside the context encoders its features are the
``W_x`` block of ``W_x h(x) + W_y y``, which broadcasts over the enumerated label.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..nn import CategoricalHead
from ..nn.nets import family
from .config import NetConfig

# The input that a family's trunk reads: the data.
X = "x"


class NetsByName:
    """Mixin for :class:`~ppl_ssvae.models.base.SemiSupervisedModel` subclasses whose
    config is a :class:`~ppl_ssvae.models.config.NetConfig`."""

    config: NetConfig

    def x_trunk(self) -> nn.Module | None:
        """A fresh trunk for a network that reads x (None for dense: x as it is)."""
        c = self.config
        return family(c.net).trunk(c.input_dim, c.image_shape, c.activation, **c.net_args)

    def input_trunks(self, inputs: Mapping[str, int]) -> dict[str, nn.Module]:
        """The trunks of a context encoder on ``inputs``: one on x if it reads x."""
        trunk = self.x_trunk() if X in inputs else None
        return {} if trunk is None else {X: trunk}

    def x_classifier(self) -> CategoricalHead:
        """``q(y|x)`` on the family's trunk (Kingma eq. 6)."""
        c = self.config
        return CategoricalHead(c.input_dim, c.hidden, c.num_classes, c.activation,
                               trunk=self.x_trunk())  # fmt: skip

    def net_decoder(self, inputs: Mapping[str, int]) -> nn.Module:
        """``p(x | inputs)`` of the family; dense layers use the hidden widths reversed."""
        c = self.config
        return family(c.net).decoder(inputs, c.hidden[::-1], c.input_dim, c.likelihood,
                                     c.sigma2, c.activation, c.image_shape, **c.net_args)  # fmt: skip
