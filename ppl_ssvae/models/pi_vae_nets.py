"""The π-VAE's networks (Berkhahn et al. 2019, App. A): unconditional encoders and decoders,
dense, CNN (Table 14), Small-NORB CNN (Table 16) and LSTM (sequences), and the encoder
with its π and z heads.

An encoder trunk maps flattened inputs (B, D) to features (B, F) and exposes
``features``; heads on top return distributions. A decoder maps a code (B, C) to the
distribution of the flattened input. CNN and LSTM nets reshape internally, so every
model still sees x as (N, D).

The CNN is the ``pi-vae-cnn`` family of the network registry (:mod:`ppl_ssvae.nn.nets`),
which the pi-VAE's ``net="cnn"`` builds; the label-latent models refuse it (its decoder
reads one code and its batch norm would see the enumerated classes as rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import UserError
from ..nn.context import DiagonalGaussian
from ..nn.conv import check_image
from ..nn.layers import full_precision, head, mlp, output_width
from ..nn.likelihoods import output_distribution, output_params
from ..nn.nets import NetFamily, register_net


class DenseEncoder(nn.Module):
    """Stacked dense layers (Table 13: 784-1024-1024, relu)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        self.net = mlp([input_dim, *hidden], act)
        self.features = output_width(input_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(conv: nn.Module, channels: int) -> list[nn.Module]:
    # Convolutions feeding batch norm carry no bias: BN removes any per-channel shift,
    # so a bias would get an exactly zero gradient.
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


def _half(size: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class ConvEncoder(nn.Module):
    """Table 14 encoder: three 3x3 convolutions (the last with stride 2), each with batch
    norm and relu, then a dense layer with batch norm, relu and dropout.

    Inputs are flattened images (B, C*H*W) in PyTorch's (C, H, W) order.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: int = 64,
        hidden: int = 512,
        dropout: float = 0.5,
    ):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.convs = nn.Sequential(
            *_conv_bn(nn.Conv2d(c, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.Conv2d(channels, channels, 3, 2, 1, bias=False), channels),
        )
        self.dense = nn.Sequential(
            nn.Linear(channels * _half(h) * _half(w), hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, *self.image_shape)
        return self.dense(self.convs(images).flatten(1))


class ConvDecoder(nn.Module):
    """Table 14 decoder: dense layer to (channels, H/2, W/2) with batch norm, relu and
    dropout, two 3x3 transposed convolutions, one with stride 2 back to (H, W), each with
    batch norm and relu, and a 1x1 transposed convolution emitting the likelihood's
    parameters per pixel. Returns a distribution over flattened (C*H*W) images.
    """

    def __init__(
        self,
        code_dim: int,
        image_shape: Sequence[int],
        channels: int = 64,
        dropout: float = 0.5,
        likelihood_name: str = "bernoulli",
        sigma2: float | None = None,
    ):
        super().__init__()
        c, h, w = image_shape
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        self.grid = (channels, _half(h), _half(w))
        self.dense = nn.Sequential(
            nn.Linear(code_dim, channels * _half(h) * _half(w), bias=False),
            nn.BatchNorm1d(channels * _half(h) * _half(w)),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        # output_padding restores an even size that the stride-2 encoder halved
        pad = (h - (2 * _half(h) - 1), w - (2 * _half(w) - 1))
        self.deconvs = nn.Sequential(
            *_conv_bn(nn.ConvTranspose2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(nn.ConvTranspose2d(channels, channels, 3, 1, 1, bias=False), channels),
            *_conv_bn(
                nn.ConvTranspose2d(channels, channels, 3, 2, 1, output_padding=pad, bias=False),
                channels,
            ),
            head(nn.ConvTranspose2d(channels, c * self.n_params, 1)),
        )

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        grid = self.dense(code).reshape(-1, *self.grid)
        params = self.deconvs(grid).chunk(self.n_params, dim=1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )


PI_VAE_CNN = "pi-vae-cnn"


def pi_vae_cnn_trunk(
    input_dim: int, image_shape: Sequence[int] | None, act: str,
    channels: int = 64, features: int = 512, dropout: float = 0.5,
) -> ConvEncoder:  # fmt: skip
    """Table 14's encoder; ``features`` is its dense layer's width (the config's conv_hidden)."""
    return ConvEncoder(check_image(input_dim, image_shape, PI_VAE_CNN), channels, features,
                       dropout)  # fmt: skip


def pi_vae_cnn_decoder(
    inputs: Mapping[str, int], hidden: Sequence[int], output_dim: int, likelihood: str,
    sigma2: float | None, act: str, image_shape: Sequence[int] | None,
    channels: int = 64, features: int = 512, dropout: float = 0.5,
) -> ConvDecoder:  # fmt: skip
    """Table 14's decoder on one code (the pi-VAE's ``pi ⊕ z``)."""
    if len(inputs) != 1:
        raise UserError(f"the {PI_VAE_CNN} decoder reads one code; got ({', '.join(inputs)})")
    (code_dim,) = inputs.values()
    shape = check_image(output_dim, image_shape, PI_VAE_CNN)
    return ConvDecoder(code_dim, shape, channels, dropout, likelihood, sigma2)


register_net(PI_VAE_CNN, NetFamily(
    pi_vae_cnn_trunk, pi_vae_cnn_decoder,
    "the pi-VAE's Table 14 CNN: batch norm, dropout, one code input (images)",
    needs_image=True, conditional=False,
))  # fmt: skip


PI_VAE_NORB_CNN = "pi-vae-norb-cnn"
# Table 16: four 7x7 stride-2 convolutions (96 -> 48 -> 24 -> 12 -> 6) and their mirror.
NORB_CHANNELS = (32, 32, 64, 64)
NORB_KERNEL = 7


class NorbEncoder(nn.Module):
    """Table 16 encoder (Small-NORB, stereo pairs as 2 channels): 7x7 stride-2 convolutions
    with batch norm and relu, then a dense layer with batch norm, relu and dropout."""

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int], hidden: int, dropout: float
    ):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *channels[:-1]), channels, strict=True):
            conv = nn.Conv2d(c_in, c_out, NORB_KERNEL, 2, NORB_KERNEL // 2, bias=False)
            layers += _conv_bn(conv, c_out)
            h, w = _half(h), _half(w)
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(
            nn.Linear(channels[-1] * h * w, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.convs(x.reshape(-1, *self.image_shape)).flatten(1))


class NorbDecoder(nn.Module):
    """Table 16 decoder: a dense layer to the encoder's last grid (batch norm, relu,
    dropout), 7x7 stride-2 transposed convolutions with batch norm and relu back to the
    image size, and a 7x7 stride-1 one emitting the likelihood's parameters per pixel."""

    def __init__(
        self, code_dim: int, image_shape: Sequence[int], channels: Sequence[int],
        dropout: float, likelihood_name: str, sigma2: float | None,
    ):  # fmt: skip
        super().__init__()
        c, h, w = image_shape
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        sizes = [(h, w)]
        for _ in channels:
            sizes.append((_half(sizes[-1][0]), _half(sizes[-1][1])))
        self.grid = (channels[-1], *sizes[-1])
        cells = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.dense = nn.Sequential(
            nn.Linear(code_dim, cells, bias=False), nn.BatchNorm1d(cells), nn.ReLU(),
            nn.Dropout(dropout),
        )  # fmt: skip
        layers: list[nn.Module] = []
        outs = tuple(channels[::-1])  # Table 16: 64, 64, 32, 32 from 64, 64, 64, 32
        for i, (c_in, c_out) in enumerate(zip((channels[-1], *outs[:-1]), outs, strict=True)):
            (big_h, big_w), (small_h, small_w) = sizes[-2 - i], sizes[-1 - i]
            pad = (big_h - (2 * small_h - 1), big_w - (2 * small_w - 1))
            deconv = nn.ConvTranspose2d(c_in, c_out, NORB_KERNEL, 2, NORB_KERNEL // 2,
                                        output_padding=pad, bias=False)  # fmt: skip
            layers += _conv_bn(deconv, c_out)
        layers.append(head(nn.ConvTranspose2d(channels[0], c * self.n_params, NORB_KERNEL, 1,
                                              NORB_KERNEL // 2)))  # fmt: skip
        self.deconvs = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        grid = self.dense(code).reshape(-1, *self.grid)
        params = self.deconvs(grid).chunk(self.n_params, dim=1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )


def pi_vae_norb_trunk(
    input_dim: int, image_shape: Sequence[int] | None, act: str,
    channels: Sequence[int] = NORB_CHANNELS, features: int = 256, dropout: float = 0.5,
) -> NorbEncoder:  # fmt: skip
    """Table 16's encoder (``features``: its dense layer, 256 in the paper)."""
    shape = check_image(input_dim, image_shape, PI_VAE_NORB_CNN)
    return NorbEncoder(shape, tuple(channels), features, dropout)


def pi_vae_norb_decoder(
    inputs: Mapping[str, int], hidden: Sequence[int], output_dim: int, likelihood: str,
    sigma2: float | None, act: str, image_shape: Sequence[int] | None,
    channels: Sequence[int] = NORB_CHANNELS, features: int = 256, dropout: float = 0.5,
) -> NorbDecoder:  # fmt: skip
    """Table 16's decoder on one code (z alone: sec 4 feeds no pi to it)."""
    if len(inputs) != 1:
        raise UserError(f"the {PI_VAE_NORB_CNN} decoder reads one code; got ({', '.join(inputs)})")
    (code_dim,) = inputs.values()
    shape = check_image(output_dim, image_shape, PI_VAE_NORB_CNN)
    return NorbDecoder(code_dim, shape, tuple(channels), dropout, likelihood, sigma2)


register_net(PI_VAE_NORB_CNN, NetFamily(
    pi_vae_norb_trunk, pi_vae_norb_decoder,
    "the pi-VAE's Table 16 Small-NORB CNN: 7x7 stride-2 convolutions, batch norm, dropout",
    needs_image=True, conditional=False,
))  # fmt: skip


class LSTMEncoder(nn.Module):
    """Table 15 encoder: a dense layer along the feature axis (relu), an LSTM, and a dense
    layer (relu) on the LSTM's last output, giving one feature vector per sequence.

    Inputs are flattened sequences (B, T*C) in time-major (T, C) order.
    """

    def __init__(self, seq_len: int, channels: int, widths: Sequence[int] = (40, 40, 30)):
        super().__init__()
        pre, width, post = widths
        self.shape = (seq_len, channels)
        self.pre = nn.Sequential(nn.Linear(channels, pre), nn.ReLU())
        self.lstm = nn.LSTM(pre, width, batch_first=True)
        self.post = nn.Sequential(nn.Linear(width, post), nn.ReLU())
        self.features = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.lstm(self.pre(x.reshape(-1, *self.shape)))
        return self.post(steps[:, -1])


class LSTMDecoder(nn.Module):
    """Table 15 decoder: a dense layer (relu) on the code, repeated over the T steps, an
    LSTM, a dense layer (relu) per step and per-step likelihood parameters (Gaussian
    mean, softplus scale). Returns a distribution over flattened (T*C) sequences.
    """

    def __init__(
        self,
        code_dim: int,
        seq_len: int,
        channels: int,
        widths: Sequence[int] = (40, 40, 30),
        likelihood_name: str = "gaussian",
        sigma2: float | None = None,
    ):
        super().__init__()
        pre, width, post = widths
        self.seq_len = seq_len
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        self.pre = nn.Sequential(nn.Linear(code_dim, post), nn.ReLU())
        self.lstm = nn.LSTM(post, width, batch_first=True)
        self.post = nn.Sequential(nn.Linear(width, pre), nn.ReLU())
        self.out = head(nn.Linear(pre, channels * self.n_params))

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        h = self.pre(code)
        steps, _ = self.lstm(h.unsqueeze(1).expand(-1, self.seq_len, -1))
        params = self.out(self.post(steps)).chunk(self.n_params, dim=-1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )


class PiEncoder(nn.Module):
    """One trunk, two heads forked from its last layer (Berkhahn et al. sec 2.1, Fig. 1a):
    ``q(z|x) = N(mu(x), diag sigma^2(x))`` and the class layer ``pi(x) = softmax(.)``.

    Either head may be absent: the supervised sibling ES has no z head, the unsupervised
    sibling EU no pi head (Table 2). ``factor_classes`` adds one more pi head per further
    label factor (Table 16: category, elevation, azimuth, lighting of Small-NORB).
    ``forward`` runs the trunk once for every head.
    """

    def __init__(
        self,
        trunk: nn.Module,
        z_dim: int | None,
        num_classes: int | None,
        factor_classes: Sequence[int] = (),
    ):
        super().__init__()
        self.trunk = trunk
        self.q_z = DiagonalGaussian(trunk.features, z_dim) if z_dim else None
        self.pi = head(nn.Linear(trunk.features, num_classes)) if num_classes else None
        self.factor_pi = nn.ModuleList(head(nn.Linear(trunk.features, k)) for k in factor_classes)

    def forward(self, x: torch.Tensor) -> tuple[dist.Distribution | None, dist.Categorical | None]:
        """``(q(z|x), pi(x))``; see ``heads`` for the further factor heads too."""
        q_z, q_pi, _ = self.heads(x)
        return q_z, q_pi

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The main pi head's logits, ``(B, K)``, without the z head."""
        return self.pi(self.trunk(x))

    def heads(
        self, x: torch.Tensor
    ) -> tuple[dist.Distribution | None, dist.Categorical | None, list[dist.Categorical]]:
        h = self.trunk(x)
        q_z = self.q_z(h) if self.q_z is not None else None
        q_pi = dist.Categorical(logits=full_precision(self.pi(h))) if self.pi is not None else None
        factors = [dist.Categorical(logits=full_precision(head(h))) for head in self.factor_pi]
        return q_z, q_pi, factors
