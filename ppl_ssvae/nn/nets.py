"""Network families by name: the ``net`` of a model's config, as ``guide`` names its guide.

A family builds two things from the model's sizes and its own ``net_args``:

- ``trunk(input_dim, image_shape, act, **net_args)``: a module run on x first, once per
  data row, exposing ``features``; the networks that read x (q(y|x), the context
  encoders of q(z|x, y), q(a|x), ...) read its features instead. None: x as it is.
- ``decoder(inputs, hidden, output_dim, likelihood, sigma2, act, image_shape, **net_args)``:
  ``p(x | inputs)`` called with the inputs in order (``p_x(z, y)``, or ``p_x(z)``),
  returning the likelihood's distribution over the flattened x.

``dense`` is the library's networks as they always were (no trunk, MLP decoders), so a
config written before nets had names rebuilds the same parameters. ``conv`` is a strided
conv trunk and a deconvolutional decoder (:mod:`ppl_ssvae.nn.conv`) for image data. A new
family is one ``register_net`` call; the keyword defaults of its trunk function are its
``net_args``, and the contract test over model x guide x net picks it up.

    >>> family("conv").defaults
    {'channels': (32, 64)}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError, check_like_default
from .context import LABEL, ConditionalDecoder, Decoder
from .conv import ConvTrunk, DeconvDecoder, check_channels, check_image

DENSE = "dense"


@dataclass(frozen=True)
class NetFamily:
    """A network family: its trunk and decoder factories and a one-line summary.

    ``needs_image``: x must be images of a known ``(C, H, W)``. ``conditional``: the
    decoder reads several inputs (``(z, y)``) and both parts broadcast over an enumerated
    label dimension, which the label-latent and latent-classifier models need; the
    pi-VAE's own nets read one code.
    """

    trunk: Callable[..., nn.Module | None]
    decoder: Callable[..., nn.Module]
    summary: str
    needs_image: bool = False
    conditional: bool = True

    @property
    def defaults(self) -> dict[str, Any]:
        """The family's ``net_args`` and their defaults (the trunk's keyword arguments)."""
        params = list(inspect.signature(self.trunk).parameters.values())[3:]
        return {p.name: p.default for p in params}


def dense_trunk(input_dim: int, image_shape: Sequence[int] | None, act: str) -> None:
    """No trunk: the networks read the flattened x (``W_x x`` in the context encoder)."""
    return None


def dense_decoder(
    inputs: Mapping[str, int], hidden: Sequence[int], output_dim: int, likelihood: str,
    sigma2: float | None, act: str, image_shape: Sequence[int] | None,
) -> nn.Module:  # fmt: skip
    """The MLP decoders: ``p(x|z, y)`` with a label-conditioned first layer (M2, ADGM, the
    latent classifier), ``p(x|z)`` without a label (GM-DGM, AGM-DGM)."""
    (z_name, z_dim), *rest = inputs.items()
    if not rest:
        return Decoder(z_dim, hidden, output_dim, likelihood, sigma2, act)
    if [n for n, _ in rest] != [LABEL]:
        raise UserError(f"the dense decoder reads (z) or (z, y); got ({', '.join(inputs)})")
    return ConditionalDecoder(z_dim, inputs[LABEL], hidden, output_dim, likelihood, sigma2, act)


def conv_trunk(
    input_dim: int, image_shape: Sequence[int] | None, act: str,
    channels: Sequence[int] = (32, 64),
) -> ConvTrunk:  # fmt: skip
    """Strided 3x3 convolutions, one per entry of ``channels`` (28x28 -> 14 -> 7)."""
    check_channels(channels)
    return ConvTrunk(check_image(input_dim, image_shape, "conv"), channels, act)


def conv_decoder(
    inputs: Mapping[str, int], hidden: Sequence[int], output_dim: int, likelihood: str,
    sigma2: float | None, act: str, image_shape: Sequence[int] | None,
    channels: Sequence[int] = (32, 64),
) -> DeconvDecoder:  # fmt: skip
    """A linear map of the inputs to the trunk's last feature map, then transposed
    convolutions back to the image (``hidden`` is the encoders' business here)."""
    check_channels(channels)
    shape = check_image(output_dim, image_shape, "conv")
    return DeconvDecoder(inputs, shape, channels, likelihood, sigma2, act)


NETS: dict[str, NetFamily] = {
    DENSE: NetFamily(dense_trunk, dense_decoder, "dense layers on the flattened x (default)"),
    "conv": NetFamily(
        conv_trunk,
        conv_decoder,
        "strided conv trunk, deconvolutional decoder (images)",
        needs_image=True,
    ),
}


def register_net(name: str, net: NetFamily) -> None:
    """Add a network family; it is then a ``--net`` choice of every model that takes nets
    by name (``conditional`` families) and of the contract test."""
    if not isinstance(net, NetFamily):
        raise UserError(f"register_net({name!r}) takes a NetFamily, got {net!r}")
    if name in NETS and NETS[name] != net:
        raise UserError(f"a net family named {name!r} is already registered")
    NETS[name] = net


def family(name: str) -> NetFamily:
    if name not in NETS:
        raise UserError(f"unknown net {name!r}; choose one of {', '.join(NETS)}")
    return NETS[name]


def describe_nets() -> str:
    """One line per family: name, summary and its ``net_args`` with defaults."""
    lines = []
    for name, net in NETS.items():
        args = ", ".join(f"{k}={v!r}" for k, v in net.defaults.items()) or "no net_args"
        lines.append(f"{name}: {net.summary} ({args})")
    return "\n".join(lines)


def resolve_net_args(name: str, net_args: Mapping[str, Any]) -> dict[str, Any]:
    """``net_args`` checked against family ``name`` and completed with its defaults; lists
    (from JSON) become tuples, so a config round trip gives equal values."""
    defaults = family(name).defaults
    unknown = sorted(set(net_args) - set(defaults))
    if unknown:
        raise UserError(
            f"net {name!r} has no net_args {unknown}; valid: {', '.join(defaults) or 'none'}"
        )
    return {
        k: check_like_default(f"net {name!r} net_args {k}", net_args.get(k, d), d, zero_ok=True)
        for k, d in defaults.items()
    }


def check_net(
    name: str, net_args: Mapping[str, Any], input_dim: int, image_shape: Sequence[int] | None
) -> dict[str, Any]:
    """The resolved ``net_args`` of a label-latent model's ``net``, after refusing a family
    that does not fit (one line each): an unconditional one, or an image net without
    images. Called when the config is built, before any network is."""
    net = family(name)
    if not net.conditional:
        usable = ", ".join(n for n, f in NETS.items() if f.conditional)
        raise UserError(
            f"net {name!r} reads one code and cannot condition on the label ({net.summary}); "
            f"this model takes: {usable}"
        )
    if net.needs_image:
        check_image(input_dim, image_shape, name)
    return resolve_net_args(name, net_args)
