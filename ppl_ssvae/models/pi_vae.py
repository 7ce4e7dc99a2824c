"""Berkhahn et al. (2019): the VAE with a pi (class) layer, and its siblings ES and EU."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..nn import Decoder, eval_mode, output_params
from ..nn.nets import family
from ..objectives import REPARAMETERISED
from .base import DATA_PLATE, GuideModules, ModelConfig, SemiSupervisedModel, split_labels
from .pi_vae_nets import (
    PI_VAE_CNN,
    PI_VAE_NORB_CNN,
    DenseEncoder,
    LSTMDecoder,
    LSTMEncoder,
    PiEncoder,
)
from .pi_vae_sequence import StepLSTMDecoder, StepLSTMTrunk, StepPiEncoder
from .priors import standard_normal

VARIANTS = ("ss", "es", "eu")
NETS = ("dense", "cnn", "norb-cnn", "rnn", "rnn-steps")
# Sequence nets: x is (T, C) steps flattened.
SEQUENCE_NETS = ("rnn", "rnn-steps")
# The pi-VAE's image nets: its net name -> the network registry's family.
IMAGE_NETS = {"cnn": PI_VAE_CNN, "norb-cnn": PI_VAE_NORB_CNN}


@dataclasses.dataclass
class PiVAEConfig(ModelConfig):
    """pi-VAE hyper-parameters; defaults follow Berkhahn et al. App. A.1 (Table 13).

    Attributes:
        variant: ``"ss"`` the semi-supervised model (Fig. 1a), ``"es"`` its supervised
            sibling (encoder + pi layer, cross-entropy only), ``"eu"`` its unsupervised
            sibling (the VAE without the pi layer and its loss); Table 2.
        net: ``"dense"`` (Table 13), ``"cnn"`` (Table 14, images; the network registry's
            ``pi-vae-cnn`` family), ``"norb-cnn"`` (Table 16, Small-NORB's stereo pairs;
            ``pi-vae-norb-cnn``: ``conv_hidden=256``, ``pi_to_decoder=False`` and four
            heads by ``factor_classes`` make it the paper's), ``"rnn"`` (Table 15's
            layers, multichannel sequences, one z per sequence) or ``"rnn-steps"`` (Table
            15 as listed: a z of ``z_dim`` and class logits per time step, the logits
            averaged over steps for the sequence's pi).
        z_dim: size of the Gaussian latent (2 in Tables 13-15).
        hidden: dense encoder widths; the dense decoder uses them reversed.
        activation: activation of the dense layers.
        alpha: alpha(y) of eq. 5 for labelled rows: the classification term is
            ``alpha / #labelled * sum CE`` next to the batch-mean ELBO (the library sums
            the ELBO over rows, so the loss is that times the batch size B:
            ``alpha B / #labelled * sum CE``). The paper says alpha = 1 but not how its
            Keras loss scales the ELBO; with alpha = 1 here the pi layer barely learns
            (54.6% test on Fashion-MNIST with 1000 labels). The default 10 was best on
            validation among 1, 10, 30, 100 and 784 under an earlier optimizer
            (results/pi_vae_alpha_sweep) and matches the paper at 100 labels; under
            today's Keras RMSprop, validation prefers 300 at 1000 labels
            (results/pi_vae_fashion_mnist_1000_dense_alpha_sweep_keras).
        beta: weight of the KL term (beta_norm of sec 4; 1 is the plain ELBO).
        pi_to_decoder: feed pi into the decoder (eq. 2); False cuts that link (sec 4,
            App. A.4) so pi only shapes the latent through the shared trunk.
        sigma2: fixed output variance for ``likelihood="gaussian"``; None learns a
            softplus scale (Table 15).
        image_shape: (C, H, W) of the flattened images, for ``net="cnn"``.
        conv_channels, conv_hidden, dropout: CNN widths and dropout rate (Table 14).
        sequence_channels: C of the flattened (T, C) sequences, for ``net="rnn"``;
            T = input_dim / C.
        rnn_hidden: widths of the dense-in, LSTM and dense-out layers (Table 15).
        factor_classes: class counts of further pi heads, one per extra label factor
            (Table 16); labels are then ``(N, 1 + len(factor_classes))``, column 0 for the
            main pi layer, ``-1`` where a factor is unknown. Only the main pi can feed the
            decoder; the factor heads are losses on the shared trunk (sec 4).
    """

    variant: str = "ss"
    net: str = "dense"
    z_dim: int = 2
    hidden: tuple[int, ...] = (1024, 1024)
    activation: str = "relu"
    alpha: float = 10.0
    beta: float = 1.0
    pi_to_decoder: bool = True
    sigma2: float | None = None
    image_shape: tuple[int, ...] = (1, 28, 28)
    conv_channels: int = 64
    conv_hidden: int = 512
    dropout: float = 0.5
    sequence_channels: int = 1
    rnn_hidden: tuple[int, ...] = (40, 40, 30)
    factor_classes: tuple[int, ...] = ()


class PiVAE(SemiSupervisedModel):
    r"""The pi-layer VAE of Berkhahn, Keys, Ovsyannikov and Rapp (2019).

    One encoder trunk with three heads (sec 2.1, Fig. 1a): ``mu(x)``, ``sigma(x)`` for
    ``q(z|x) = N(mu, diag sigma^2)`` (eq. 1) and the class layer ``pi(x) = softmax(.)``.
    The decoder reads ``pi ⊕ z`` (eq. 2)::

        z  ~ q(z|x)                        encoder, reparameterised
        pi = pi(x)                         deterministic, same trunk pass
        x  ~ p_theta(x | pi ⊕ z)           Bernoulli or Gaussian

    Loss (eq. 3-5), minimised, per batch::

        L     = B * (mean_rows -L_ELBO + L_cl)    (B rows; the paper averages the ELBO)
        L_ELBO = E_q(z|x)[log p(x | pi ⊕ z)] - beta KL[q(z|x) || N(0, I)]
        L_cl  = alpha / #labelled * sum_labelled -log pi_y(x)

    There is no KL term on pi, and unlabelled rows (y = -1) add nothing to L_cl.

    In Pyro, pi is a site ``log_pi`` (the log-probabilities ``log pi(x)``, for a stable
    cross-entropy) whose guide is a point mass at the encoder's output and whose prior,
    a one-hot class, is masked out of the objective; both masks make its KL exactly 0.
    The guide runs the trunk once for z and pi, and the ELBO's replay hands that same
    pi to the model, so model and guide see one pi, one dropout mask and one batch-norm
    update per step. The cross-entropy is a ``pyro.factor`` in the model, masked to the
    labelled rows and scaled by ``alpha B / #labelled``; ``make_elbo`` is
    ``TraceMeanField_ELBO`` so the z KL is analytic as in eq. 4, and one ``svi.step``
    is one optimisation step on exactly ``L``. Run alone, the model draws a one-hot pi
    from a uniform class, which is the conditional generation ``sample`` does.

    The siblings of Table 2: ES keeps the trunk and the pi head and its loss is ``L_cl``
    alone (no z, no decoder); EU drops the pi head and ``L_cl``.
    """

    name = "pi-vae"
    # TraceMeanField_ELBO by default: analytic KL for z (eq. 4); the masked pi site
    # contributes exactly 0. Other objectives estimate the same loss with a sampled KL. The
    # model gathers log pi at the (B,) labels and the cnn / rnn nets reshape to (B, ...),
    # so a leading particle dim breaks them: particles run one after another.
    objective_family = REPARAMETERISED
    default_objective = "trace_mean_field"
    vectorize_particles = False
    label_in_joint = False  # pi(x) feeds the decoder; y enters only the CE loss (eq. 5)
    config_class = PiVAEConfig
    # q(z|x) is a head of the encoder trunk it shares with the pi layer, and the default
    # objective takes eq. 4's KL in closed form: no other guide family fits.
    guide_latents = ()
    fixed_guide_reason = (
        "its q(z|x) is a diagonal-Gaussian head on the trunk shared with the pi layer and "
        "its loss (eq. 4) uses that Gaussian's analytic KL; keep guide='gaussian'"
    )
    # App. A.1-A.2: "RMSprop without decay and a momentum parameter of 0.9", lr 5e-4, grey
    # levels in [0, 1]; sec 2.3: 1:1 labelled/unlabelled batches. Keras 2.2's RMSprop (lr, rho
    # = 0.9, epsilon = 1e-7, decay = 0) has no momentum: its 0.9 is rho, torch's alpha. Read
    # that way, ES at 1000 labels lands on the paper's 76.6% (76.99%); torch's momentum 0.9
    # on top of alpha 0.99 gave 79.92% and SS < ES (README, results/).
    fit_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "rmsprop", "lr": 5e-4, "rho": 0.9, "eps": 1e-7, "lr_decay": 1.0,
        "labelled_share": "1:1", "binarize": False,
    }  # fmt: skip

    def __init__(self, config: PiVAEConfig, guide: GuideModules | None = None) -> None:
        super().__init__(config, guide)
        c = config
        _validate(c)
        self.has_pi = c.variant != "eu"
        self.has_vae = c.variant != "es"
        self.pi_to_decoder = self.has_pi and self.has_vae and c.pi_to_decoder
        self.register_buffer("prior", torch.full((c.num_classes,), 1.0 / c.num_classes))
        encoder = StepPiEncoder if c.net == "rnn-steps" else PiEncoder
        self.encoder = encoder(
            _encoder_trunk(c),
            c.z_dim if self.has_vae else None,
            c.num_classes if self.has_pi else None,
            c.factor_classes if self.has_pi else (),
        )
        code_dim = self.latent_units + (c.num_classes if self.pi_to_decoder else 0)
        self.decoder = _decoder(c, code_dim) if self.has_vae else None
        self._initialise()

    @property
    def latent_units(self) -> int:
        """Units of z: ``z_dim``, or ``z_dim`` per time step with ``net="rnn-steps"``."""
        c = self.config
        return c.z_dim * (c.input_dim // c.sequence_channels if c.net == "rnn-steps" else 1)

    def p_z(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> dist.Distribution:
        """``p(z) = N(0, I)`` over every unit of z (eq. 1's prior)."""
        return standard_normal(self.latent_units, self.prior, batch_shape)

    # -- the Pyro pair ---------------------------------------------------------------------
    def p_log_pi(
        self, batch_shape: torch.Size | tuple[int, ...] = (), num_classes: int | None = None
    ) -> dist.Distribution:
        """A one-hot class in log space, masked: it only matters when the model runs alone."""
        probs = (
            self.prior
            if num_classes is None
            else self.prior.new_full((num_classes,), 1 / num_classes)
        )
        one_hot = dist.OneHotCategorical(probs).expand(batch_shape)
        log_one_hot = dist.TransformedDistribution(one_hot, [dist.transforms.ExpTransform().inv])
        return log_one_hot.mask(False)

    def pi_sites(self) -> list[tuple[str, str, int]]:
        """``(pi site, classification factor, classes)`` of every pi head, main head first."""
        if not self.has_pi:
            return []
        c = self.config
        sites = [("log_pi", "classification", c.num_classes)]
        return sites + [(f"log_pi_{j}", f"classification_{j}", k)
                        for j, k in enumerate(c.factor_classes, start=1)]  # fmt: skip

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        c = self.config
        labels = y.unsqueeze(-1) if y.dim() == 1 else y  # 1-D: labels of the main head only
        if self.decoder is not None:
            pyro.module(f"{self.name}.decoder", self.decoder)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            log_pi = None
            for column, (site, factor, k) in enumerate(self.pi_sites()):
                log_p = pyro.sample(site, self.p_log_pi((x.shape[0],), k))
                log_pi = log_p if column == 0 else log_pi
                if column >= labels.shape[1]:
                    continue
                observed, y_filled = split_labels(labels[:, column])
                labelled = int(observed.sum())
                if labelled and c.alpha:  # pyro refuses a zero scale
                    log_p_y = log_p.gather(-1, y_filled.unsqueeze(-1)).squeeze(-1)
                    scale = c.alpha * x.shape[0] / labelled
                    with poutine.mask(mask=observed), poutine.scale(scale=scale):
                        pyro.factor(factor, log_p_y)
            if self.has_vae:
                with poutine.scale(scale=c.beta):
                    z = pyro.sample("z", self.p_z())
                pyro.sample("x", self.decoder(self.code(z, log_pi)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self.check_batch(x, y)
        pyro.module(f"{self.name}.encoder", self.encoder)
        q_z, q_pi, q_factors = self.encoder.heads(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            heads = [q_pi, *q_factors] if q_pi is not None else []
            for (site, _, _), head in zip(self.pi_sites(), heads, strict=True):
                pyro.sample(site, dist.Delta(head.logits, event_dim=1).mask(False))
            if q_z is not None:
                with poutine.scale(scale=self.config.beta):
                    pyro.sample("z", q_z)

    def code(self, z: torch.Tensor, log_pi: torch.Tensor | None) -> torch.Tensor:
        """The decoder input ``pi ⊕ z`` (eq. 2), or ``z`` when the link is cut."""
        if not self.pi_to_decoder:
            return z
        return torch.cat([log_pi.exp(), z], -1)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """The decoder with pi set to one-hot(y), as in :meth:`sample` (y is ignored without
        a pi -> decoder link)."""
        if self.decoder is None:
            raise UserError("the 'es' variant has no decoder and cannot decode")
        log_pi = F.one_hot(y, self.config.num_classes).to(z.dtype).log()
        return self.decoder(self.code(z, log_pi if self.pi_to_decoder else None))

    def check_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """Class ids ``(N,)``, or ``(N, 1 + len(factor_classes))`` with one column per pi head."""
        factors = self.config.factor_classes
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        if y.dim() != 2:
            return super().check_y(y, n)
        if y.shape != (n, 1 + len(factors)):
            raise UserError(
                f"y has shape {tuple(y.shape)}; expected ({n},) or ({n}, {1 + len(factors)}): one "
                "column per pi head (main class, then factor_classes)"
            )
        if y.dtype.is_floating_point:
            raise UserError("y must hold integer class ids (-1 for unlabelled), not floats")
        for column, k in enumerate((self.config.num_classes, *factors)):
            if n and (y[:, column].min() < -1 or y[:, column].max() >= k):
                raise UserError(f"labels of pi head {column} must be in -1..{k - 1}")
        return y.to(self.device, torch.long)

    # -- prediction ------------------------------------------------------------------------
    @property
    def can_classify(self) -> bool:
        return self.has_pi

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    @property
    def generates_by_class(self) -> bool:
        return self.pi_to_decoder

    @property
    def reconstruction_scorer(self) -> str | None:  # type: ignore[override]
        return "pi_vae" if self.decoder is not None else None

    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_pi:
            raise UserError("the 'eu' variant has no pi layer and cannot classify")
        return F.softmax(self.encoder.class_logits(x), -1)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """Generate ``n`` inputs from ``z ~ N(0, I)`` with pi set to one-hot(y).

        ``y=None`` draws uniform classes. Without a pi -> decoder link (EU, or
        ``pi_to_decoder=False``) generation is unconditional and ``y`` is refused.
        """
        if self.decoder is None:
            raise UserError("the 'es' variant has no decoder and cannot generate")
        if y is not None and not self.pi_to_decoder:
            raise UserError(
                "this pi-VAE's decoder does not read pi (variant 'eu' or pi_to_decoder=False); "
                "sample without y"
            )
        # The base check (one class per sample, not one per pi head); with y=None, class 0
        # stands in so that n is checked all the same.
        y_checked = super().check_y(0 if y is None else y, n, sampling=True)
        with eval_mode(self):  # batch norm running statistics, no dropout
            z = self.p_z((n,)).sample()
            log_pi = None
            if self.pi_to_decoder:
                # Categorical cannot draw 0 samples; y_checked then is the empty tensor
                y = dist.Categorical(self.prior).sample((n,)) if y is None and n else y_checked
                log_pi = F.one_hot(y, self.config.num_classes).to(z.dtype).log()
            p_x = self.decoder(self.code(z, log_pi))
            return p_x.mean if mean else p_x.sample()


def _validate(c: PiVAEConfig) -> None:
    if c.variant not in VARIANTS:
        raise UserError(
            f"unknown pi-VAE variant {c.variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    if c.net not in NETS:
        raise UserError(f"unknown pi-VAE net {c.net!r}; choose one of {', '.join(NETS)}")
    output_params(c.likelihood, c.sigma2)  # validates the likelihood name
    if any(k < 2 for k in c.factor_classes):
        raise UserError(
            f"factor_classes={tuple(c.factor_classes)}: every factor needs >= 2 classes"
        )
    if c.alpha < 0 or c.beta <= 0:
        raise UserError(f"alpha={c.alpha} must be >= 0 and beta={c.beta} > 0")
    if c.net in IMAGE_NETS and (len(c.image_shape) != 3 or math.prod(c.image_shape) != c.input_dim):
        raise UserError(
            f"image_shape={tuple(c.image_shape)} must be (C, H, W) with C*H*W = input_dim "
            f"({c.input_dim})"
        )
    if c.net in SEQUENCE_NETS and (c.sequence_channels < 1 or c.input_dim % c.sequence_channels):
        raise UserError(
            f"input_dim={c.input_dim} is not a whole number of time steps of "
            f"sequence_channels={c.sequence_channels}"
        )
    if c.net in SEQUENCE_NETS and len(c.rnn_hidden) != 3:
        raise UserError(f"rnn_hidden={tuple(c.rnn_hidden)} must give three widths (Table 15)")


def _cnn_args(c: PiVAEConfig) -> dict[str, Any]:
    """The ``net_args`` of the registry's image family, from the config's fields (Table 16's
    channels are the family's own: ``conv_channels`` is Table 14's one width)."""
    args = {"features": c.conv_hidden, "dropout": c.dropout}
    return {"channels": c.conv_channels, **args} if c.net == "cnn" else args


def _encoder_trunk(c: PiVAEConfig) -> nn.Module:
    if c.net in IMAGE_NETS:
        return family(IMAGE_NETS[c.net]).trunk(
            c.input_dim, c.image_shape, c.activation, **_cnn_args(c)
        )
    if c.net in SEQUENCE_NETS:
        steps = c.input_dim // c.sequence_channels
        trunk = LSTMEncoder if c.net == "rnn" else StepLSTMTrunk
        return trunk(steps, c.sequence_channels, c.rnn_hidden)
    return DenseEncoder(c.input_dim, c.hidden, c.activation)


def _decoder(c: PiVAEConfig, code_dim: int) -> nn.Module:
    if c.net in IMAGE_NETS:
        return family(IMAGE_NETS[c.net]).decoder(
            {"code": code_dim}, c.hidden[::-1], c.input_dim, c.likelihood, c.sigma2,
            c.activation, c.image_shape, **_cnn_args(c),
        )  # fmt: skip
    if c.net == "rnn":
        steps = c.input_dim // c.sequence_channels
        return LSTMDecoder(
            code_dim, steps, c.sequence_channels, c.rnn_hidden, c.likelihood, c.sigma2
        )
    if c.net == "rnn-steps":
        steps = c.input_dim // c.sequence_channels
        pi_dim = code_dim - c.z_dim * steps
        return StepLSTMDecoder(c.z_dim, pi_dim, steps, c.sequence_channels, c.rnn_hidden,
                               c.likelihood, c.sigma2)  # fmt: skip
    return Decoder(code_dim, c.hidden[::-1], c.input_dim, c.likelihood, c.sigma2, c.activation)
