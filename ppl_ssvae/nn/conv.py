"""Convolutional networks for flattened images: a strided conv trunk ``x -> features`` and
a deconvolutional decoder ``(z, y) -> p(x|z, y)``.

Both keep the library's flat convention: x is ``(..., B, C*H*W)`` in PyTorch's (C, H, W)
order, reshaped inside. The trunk runs once per data row and feeds a
:class:`~ppl_ssvae.nn.ContextEncoder` (its first layer ``W_x h(x) + W_y y``), so under label
enumeration it never sees the K copies; the decoder runs after y, on every class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import UserError
from .context import ContextEncoder
from .layers import activation, head
from .likelihoods import output_distribution, output_params


def half(size: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


def grid_sizes(height: int, width: int, layers: int) -> list[tuple[int, int]]:
    """``(H, W)`` before and after each of ``layers`` stride-2 convolutions."""
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        sizes.append((half(h), half(w)))
    return sizes


def check_image(input_dim: int, image_shape: Sequence[int] | None, net: str) -> tuple[int, ...]:
    """``image_shape`` as ``(C, H, W)`` holding ``input_dim`` values, or a one-line UserError
    that names the fix."""
    shape = tuple(image_shape) if image_shape is not None else ()
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[0] * shape[1] * shape[2] != input_dim:
        raise UserError(
            f"net {net!r} needs x as images: image_shape (C, H, W) with C*H*W = input_dim "
            f"({input_dim}), got {tuple(image_shape) if image_shape is not None else None}; "
            "give image_shape (--image-shape 1,28,28), or use net='dense' (image data with a "
            "feature mask, std_threshold, has no image shape)"
        )
    return shape


class ConvTrunk(nn.Module):
    """Strided 3x3 convolutions with an activation after each: ``(..., B, C*H*W)`` images to
    ``(..., B, features)``, ``features = channels[-1] * H' * W'`` (H' = H / 2^n rounded up).

    Args:
        image_shape: ``(C, H, W)`` of a row.
        channels: output channels of each stride-2 convolution (28x28 -> 14x14 -> 7x7 for two).
        act: activation name.

    Example:
        >>> ConvTrunk((1, 8, 8), (4, 8))(torch.rand(5, 64)).shape
        torch.Size([5, 32])
    """

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], act: str = "relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), activation(act)]
        self.convs = nn.Sequential(*layers)
        fh, fw = grid_sizes(h, w, len(channels))[-1]
        self.features = channels[-1] * fh * fw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        out = self.convs(x.reshape(-1, *self.image_shape))
        return out.reshape(*batch, self.features)


class DeconvDecoder(nn.Module):
    """``p(x | inputs)``: a :class:`ContextEncoder` maps the inputs (``z``, and the label
    ``y`` where the decoder reads it) to a ``(channels[-1], H', W')`` feature map, and
    stride-2 transposed convolutions mirror :class:`ConvTrunk` back to ``(C, H, W)``; the
    last one emits the likelihood's parameters per pixel.

    Returns the distribution the dense decoders return (``BernoulliPixels``, or a Normal
    with one event over the flattened pixels), with batch shape the broadcast of the
    inputs' leading dims (``(K, B)`` under enumeration).

    Args:
        inputs: input name -> size, in call order (``{"z": Z, "y": K}``).
        image_shape: ``(C, H, W)`` of the output.
        channels: the trunk's channels; the decoder runs them in reverse.
        likelihood_name: ``"bernoulli"`` or ``"gaussian"``.
        sigma2: the Gaussian's fixed variance; None learns a per-pixel scale.
        act: activation name.
    """

    def __init__(
        self,
        inputs: Mapping[str, int],
        image_shape: Sequence[int],
        channels: Sequence[int],
        likelihood_name: str = "bernoulli",
        sigma2: float | None = 1.0,
        act: str = "relu",
    ):
        super().__init__()
        c, h, w = image_shape
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        sizes = grid_sizes(h, w, len(channels))
        self.grid = (channels[-1], *sizes[-1])
        self.trunk = ContextEncoder(inputs, (self.grid[0] * self.grid[1] * self.grid[2],), act)
        outs = (*channels[-2::-1], c * self.n_params)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[::-1], outs, strict=True)):
            (big_h, big_w), (small_h, small_w) = sizes[-2 - i], sizes[-1 - i]
            # output_padding restores the even sizes that the stride-2 trunk halved
            pad = (big_h - (2 * small_h - 1), big_w - (2 * small_w - 1))
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=pad),
                activation(act),
            ]
        # The last layer emits the likelihood's parameters: an output layer, no activation.
        layers[-2] = head(layers[-2])
        self.deconvs = nn.Sequential(*layers[:-1])

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> dist.Distribution:
        h = self.trunk(*args, **named)
        batch = h.shape[:-1]
        # Channels-last maps: on CPU the transposed convolutions over K x B rows are bound
        # by memory traffic; this layout took a third off their time alone (fwd + bwd) and
        # ~15% off M2's conv step (benchmarks/net_speed.py).
        grid = h.reshape(-1, *self.grid).contiguous(memory_format=torch.channels_last)
        out = self.deconvs(grid)  # (N, C * n_params, H, W)
        params = [p.reshape(*batch, -1) for p in out.chunk(self.n_params, dim=1)]
        return output_distribution(self.likelihood_name, params, self.sigma2)


def check_channels(channels: Sequence[int]) -> None:
    """One line for a conv net without convolutions."""
    if not channels:
        raise UserError("net 'conv' needs at least one convolution: net_args channels=[32, 64]")
