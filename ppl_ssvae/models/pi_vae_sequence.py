"""The π-VAE's sequence networks with a latent per time step, as Berkhahn et al.'s Table 15
lists them (UCI-HAR: 128 steps of 6 channels): every layer is applied along the feature
axis of each step, the latent means and variances are (T, 2) and the class prediction
(T, K).

The sequence has one label, so the π layer of the model (the class of the sequence, the
cross-entropy's and the decoder's) is the softmax of the per-step class logits averaged
over the steps; the latent is the T x z_dim units of every step's Gaussian.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..nn.layers import full_precision, head
from ..nn.likelihoods import output_distribution, output_params
from .pi_vae_nets import LSTMEncoder, PiEncoder


class StepLSTMTrunk(LSTMEncoder):
    """Table 15 encoder up to its heads: :class:`~ppl_ssvae.models.pi_vae_nets.LSTMEncoder`'s
    layers, with the dense layer kept on every step: ``(B, T*C) -> (B, T, features)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.lstm(self.pre(x.reshape(-1, *self.shape)))
        return self.post(steps)


class StepPiEncoder(PiEncoder):
    """:class:`~ppl_ssvae.models.pi_vae_nets.PiEncoder` on a per-step trunk: each head is
    applied to every step (Table 15's (T, 2) means and variances, (T, K) classes).
    ``q(z|x)`` is the diagonal Gaussian over all T x z_dim units; each pi head's logits are
    the mean over steps of the per-step logits (one label per sequence)."""

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.pi(self.trunk(x)).mean(1)

    def heads(
        self, x: torch.Tensor
    ) -> tuple[dist.Distribution | None, dist.Categorical | None, list[dist.Categorical]]:
        h = self.trunk(x)  # (B, T, F)
        q_z = None
        if self.q_z is not None:
            steps = self.q_z(h).base_dist  # Normal over (B, T, z_dim)
            q_z = dist.Normal(steps.loc.flatten(1), steps.scale.flatten(1)).to_event(1)

        def pooled(layer: nn.Module) -> dist.Categorical:
            return dist.Categorical(logits=full_precision(layer(h).mean(1)))

        q_pi = pooled(self.pi) if self.pi is not None else None
        return q_z, q_pi, [pooled(layer) for layer in self.factor_pi]


class StepLSTMDecoder(nn.Module):
    """Table 15 decoder with a code per step: each step reads its own ``z_t`` (and the
    sequence's pi, where the decoder reads pi), then a dense layer (relu), an LSTM, a
    dense layer (relu) and per-step likelihood parameters. The code is ``pi ⊕ z`` with z
    the T x z_dim units in time order; returns a distribution over flattened (T*C)."""

    def __init__(
        self, z_dim: int, pi_dim: int, seq_len: int, channels: int,
        widths: Sequence[int] = (40, 40, 30), likelihood_name: str = "gaussian",
        sigma2: float | None = None,
    ):  # fmt: skip
        super().__init__()
        pre, width, post = widths
        self.z_dim, self.pi_dim, self.seq_len = z_dim, pi_dim, seq_len
        self.likelihood_name, self.sigma2 = likelihood_name, sigma2
        self.n_params = output_params(likelihood_name, sigma2)
        self.pre = nn.Sequential(nn.Linear(z_dim + pi_dim, post), nn.ReLU())
        self.lstm = nn.LSTM(post, width, batch_first=True)
        self.post = nn.Sequential(nn.Linear(width, pre), nn.ReLU())
        self.out = head(nn.Linear(pre, channels * self.n_params))

    def forward(self, code: torch.Tensor) -> dist.Distribution:
        pi, z = code[..., : self.pi_dim], code[..., self.pi_dim :]
        z_steps = z.reshape(*z.shape[:-1], self.seq_len, self.z_dim)
        pi_steps = pi.unsqueeze(-2).expand(*z_steps.shape[:-1], self.pi_dim)
        h = self.pre(torch.cat([pi_steps, z_steps], -1))
        steps, _ = self.lstm(h.reshape(-1, self.seq_len, h.shape[-1]))
        params = self.out(self.post(steps)).chunk(self.n_params, dim=-1)
        return output_distribution(
            self.likelihood_name, [p.flatten(1) for p in params], self.sigma2
        )
