"""The contract every model in the library follows.

A model is an ``nn.Module`` holding its generative networks and a guide object, and
exposes ``model(x, y)`` / ``guide(x, y)`` (``y == -1`` marks unlabelled rows),
``classify(x) -> probs``, ``sample(n, y) -> x`` and a JSON-able config it can be rebuilt
from. Observed and latent labels share one ``pyro.plate``; latent labels are enumerated
in parallel, so models are trained with ``SVI`` + ``TraceEnum_ELBO``.
"""

from __future__ import annotations

import dataclasses
import weakref
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO
from torch import nn

from ..errors import UserError
from ..guides.registry import (
    CUSTOM,
    DEFAULT,
    build_latent_guide,
    legacy_guide_args,
)
from ..guides.sampling import seeded_rng, seeded_sample
from ..nn import (
    check_init_layers,
    eval_mode,
    init_normal_,
)
from ..objectives import LABEL_LATENT, build_elbo
from ..plates import DATA_PLATE, MAX_PLATE_NESTING, split_labels
from .config import ModelConfig

# What ``guide=`` accepts besides a family name in the config: a module for z, or one module
# per continuous latent (``{"z": q_z, "a": q_a}``).
GuideModules = nn.Module | Mapping[str, nn.Module]

__all__ = [
    "DATA_PLATE",
    "MAX_PLATE_NESTING",
    "GuideModules",
    "ModelConfig",
    "SemiSupervisedModel",
    "seeded_sample",
    "split_labels",
]


class SemiSupervisedModel(nn.Module):
    """Base class: input checks, classification, sampling and config round trip."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    # Training settings from the model's paper that differ from the library defaults
    # (``fit`` arguments / CLI options); the CLI applies them unless the user overrides.
    fit_defaults: ClassVar[dict[str, Any]] = {}
    # Whether the generative model's joint holds the label, p(x, y) with sum_y p(x, y) =
    # p(x): then the log-likelihood of an unlabelled row sums its label exactly
    # (ppl_ssvae.evaluation.likelihood). False for the pi-VAE, whose label only enters a loss term.
    label_in_joint: ClassVar[bool] = True
    # Capabilities that callers ask for instead of testing the class: the label is a
    # categorical latent of the generative model (enumerated; M2, ADGM, GM-DGM, AGM-DGM);
    # the model's own p(y|z) classifier on a latent z (the latent-classifier models); how
    # ppl_ssvae.evaluation.anomaly scores reconstructions (a key of its SCORERS, None: it cannot).
    label_is_latent: ClassVar[bool] = False
    classifier_on_latent: ClassVar[bool] = False
    reconstruction_scorer: ClassVar[str | None] = None

    # Config fields naming a trained run that part of the model starts from: field ->
    # (the submodule, the model that run must hold). ``fit`` loads them before a fresh
    # run's first step and records what it read (ppl_ssvae.training.init_from.init_parts).
    parts_from_runs: ClassVar[dict[str, tuple[str, str]]] = {}
    # Whether fit trains the model in stages (``training_stage``), each stepping only some
    # of its parameters: then not data-parallel, where DDP gives every parameter a gradient.
    trains_in_stages: ClassVar[bool] = False

    # The guide's continuous latents, which take the config's guide family; () for a model
    # whose guide is fixed (the pi-VAE), which then refuses every family but the default.
    guide_latents: ClassVar[tuple[str, ...]] = ("z",)
    # Why a model with no guide_latents refuses other guides (one line, for its UserError).
    fixed_guide_reason: ClassVar[str] = ""

    def __init__(self, config: ModelConfig, guide: GuideModules | None = None) -> None:
        super().__init__()
        self._custom_guides = self._check_guide(config, guide)
        if guide is not None:
            config = dataclasses.replace(config, guide=CUSTOM, guide_args={})
        self.config = config
        self._last_checked_batch: tuple | None = None

    # -- guide components ------------------------------------------------------------------
    def _check_guide(self, config: ModelConfig, guide: GuideModules | None) -> dict:
        """The user's guide modules by latent, after refusing what cannot work."""
        if not self.guide_latents:
            if guide is not None or config.guide != DEFAULT:
                got = "guide module" if guide is not None else f"guide {config.guide!r}"
                raise UserError(f"model {self.name!r} takes no {got}: {self.fixed_guide_reason}")
            return {}
        if guide is None:
            if config.guide == CUSTOM:
                raise UserError(
                    f"this {self.name!r} config was trained with a custom guide module; pass "
                    "the same module again: from_config(config, guide=module)"
                )
            return {}
        modules = dict(guide) if isinstance(guide, Mapping) else {"z": guide}
        unknown = sorted(set(modules) - set(self.guide_latents))
        if unknown or not all(isinstance(m, nn.Module) for m in modules.values()):
            raise UserError(
                f"guide modules for {self.name!r} are nn.Modules for its continuous latents "
                f"({', '.join(self.guide_latents)}); got {unknown or list(modules)} (a discrete "
                "latent such as y is enumerated, not given a guide family)"
            )
        if config.guide not in (DEFAULT, CUSTOM):
            raise UserError(
                f"pass either guide={config.guide!r} by name or a guide module, not both"
            )
        return modules

    def latent_guide(self, latent: str, out_dim: int, inputs: dict[str, int]) -> nn.Module:
        """``q(latent | inputs)``: the user's module for ``latent`` if one was passed, else the
        config's family built on a context encoder with the model's ``hidden`` and
        ``activation`` (a latent without a custom module keeps the default family)."""
        if latent in self._custom_guides:
            return self._custom_guides[latent]
        c = self.config
        name, args = (DEFAULT, {}) if c.guide == CUSTOM else (c.guide, c.guide_args)
        embed = self.input_trunks(inputs)
        return build_latent_guide(name, out_dim, inputs, c.hidden, c.activation, embed=embed,
                                  **args)  # fmt: skip

    def input_trunks(self, inputs: dict[str, int]) -> dict[str, nn.Module]:
        """Trunks that a context encoder on ``inputs`` runs its inputs through first (a conv
        trunk on x, for models whose nets are chosen by name); none here."""
        return {}

    # -- the Pyro pair -------------------------------------------------------------
    @abstractmethod
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None: ...

    @abstractmethod
    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None: ...

    # Which objectives the model admits (ppl_ssvae.objectives), its own, and whether its
    # networks take a leading particle dim (vectorised num_particles) or particles run one
    # after another.
    objective_family: ClassVar[Any] = LABEL_LATENT
    default_objective: ClassVar[str] = "trace_enum"
    vectorize_particles: ClassVar[bool] = True

    def make_elbo(
        self, objective: str | None = None, num_particles: int = 1, **kwargs: Any
    ) -> ELBO:
        """The objective the model is trained with: ``objective`` by name (None: the
        model's default), ``num_particles`` samples per step; see :mod:`ppl_ssvae.objectives`
        for the allowed names. ``kwargs`` go to the ELBO class."""
        return build_elbo(
            self.name, self.objective_family, objective, num_particles,
            default=self.default_objective, vectorize=self.vectorize_particles, **kwargs,
        )  # fmt: skip

    def training_stage(self, epoch: int | None) -> bool:
        """Called by the training loop before each epoch's steps, and with None after them
        (the evaluation sees the whole model): a model trained in stages (``m1-m2``) takes up the objective of the stage the
        epoch is in, decided by the epoch alone, so a resumed run continues in its stage.
        True when ``epoch`` begins a stage after the first: the loop then starts the
        optimizer afresh (its state and learning-rate decay), as each stage is trained like
        a run of its own. Nothing (False) by default."""
        return False

    # -- prediction ------------------------------------------------------------------
    @abstractmethod
    def _class_probs(self, x: torch.Tensor) -> torch.Tensor: ...

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Class probabilities of shape ``(N, num_classes)``; rows sum to 1.

        No rows give a ``(0, num_classes)`` tensor (a split without validation rows).
        """
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() == 2 and x.shape == (0, self.config.input_dim):
            # check_x reads the value range, which has no min/max on zero rows
            return torch.zeros((0, self.config.num_classes), device=self.device)
        x = self.check_x(x)
        with eval_mode(self):
            return torch.cat([self._class_probs(chunk) for chunk in x.split(batch_size)])

    def _initialise(self) -> None:
        """Apply ``config.init_std``; every model calls this at the end of ``__init__``."""
        std, layers = self.config.init_std, self.config.init_layers
        # Checked before the early return, so a misspelt value is never silently ignored.
        check_init_layers(layers)
        if std is None:
            return
        if not std > 0:
            raise UserError(f"init_std={std} must be > 0 (or None for torch's defaults)")
        init_normal_(self, std, layers)

    @property
    def can_classify(self) -> bool:
        """False for models without a classifier (the pi-VAE's EU sibling)."""
        return True

    @property
    def has_decoder(self) -> bool:
        """Whether the model generates inputs (``sample``, ``decode``); False for the
        pi-VAE's supervised sibling, which has none."""
        return True

    @property
    def generates_by_class(self) -> bool:
        """Whether ``sample(n, y=c)`` draws inputs of class ``c`` (the pi-VAE only when its
        decoder reads pi)."""
        return self.has_decoder

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable class id per row."""
        return self.classify(x).argmax(-1)

    @abstractmethod
    def sample(
        self, n: int, y: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """Draw ``n`` inputs from the generative model (class ``y`` if given)."""

    # -- encoder / decoder views (ppl_ssvae.evaluation.inspect) -----------------------------------
    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None, mean_samples: int = 64
    ) -> dict[str, Any]:
        """The guide's view of ``x``: ``q(y|x)`` and the posteriors of the continuous latents.

        Returns a dict with ``"y_probs"`` (``(N, K)``, absent for a model that cannot
        classify), and per continuous latent (``"z"``, and ``"a"`` where the model has one)
        the distribution of the guide's site and ``"<name>_mean"`` (``(N, dim)``). ``z`` is
        ``q(z|x, y*)`` with ``y*`` the given label where ``y >= 0``, else the most probable
        class of ``q(y|x)`` (label-latent guides put a point mass on the label they are
        given); under an auxiliary latent it is conditioned on one draw of ``a``. Means
        a flow has no closed form for are averages of ``mean_samples`` draws (seed 0).
        """
        x = self.check_x(x)
        y_probs = self.classify(x) if self.can_classify else None
        labels = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        if y is not None:
            labels = self.check_y(torch.as_tensor(y), len(x))
        if y_probs is not None:
            labels = torch.where(labels >= 0, labels, y_probs.argmax(-1))
        with eval_mode(self), seeded_rng(0, x.device):
            trace = pyro.poutine.trace(self.guide).get_trace(x, labels)
            out: dict[str, Any] = {} if y_probs is None else {"y_probs": y_probs}
            for name in ("z", "a"):
                if name in trace.nodes:
                    fn = trace.nodes[name]["fn"]
                    out[name], out[f"{name}_mean"] = fn, _mean_of(fn, mean_samples)
        return out

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """``p(x|z, y)`` for rows of ``z`` ``(N, z_dim)`` and class ids ``y`` ``(N,)``
        (models whose decoder does not see y ignore it)."""
        raise UserError(f"model {self.name!r} has no decoder to decode with")

    # -- config round trip -------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {"model": self.name, **self.config.to_dict()}

    @classmethod
    def from_config(
        cls, values: dict[str, Any], guide: GuideModules | None = None
    ) -> SemiSupervisedModel:
        """Rebuild from :meth:`to_config`; a ``"custom"`` guide needs its module(s) again."""
        values = {k: v for k, v in values.items() if k != "model"}
        if guide is not None and values.get("guide", DEFAULT) not in (DEFAULT, CUSTOM):
            raise UserError(
                f"this config names guide {values['guide']!r}; a guide module goes with "
                "a 'custom' config only"
            )
        if guide is not None:
            values = {**values, "guide": DEFAULT}
        name = values.get("guide", DEFAULT)
        if isinstance(values.get("guide_args"), dict) and name not in (DEFAULT, CUSTOM):
            # a flow saved before bases existed rebuilds on its standard-normal base
            values = {**values, "guide_args": legacy_guide_args(name, values["guide_args"])}
        config = cls.config_class.from_dict(values)
        return cls(config) if guide is None else cls(config, guide=guide)

    # -- input checks ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float32)
        d = self.config.input_dim
        if x.dim() != 2 or x.shape[1] != d:
            raise UserError(
                f"x has shape {tuple(x.shape)} but the model expects (N, {d}); "
                "flatten images and apply the same feature mask as in training"
            )
        if not torch.isfinite(x).all():
            raise UserError("x contains NaN or inf values; clean or impute them first")
        if self.config.likelihood == "bernoulli" and len(x) and (x.min() < 0 or x.max() > 1):
            raise UserError(
                f"x has values in [{x.min().item():.3g}, {x.max().item():.3g}] but a Bernoulli "
                "likelihood needs [0, 1]; scale the data or use likelihood='gaussian'"
            )
        return x.to(self.device)

    def check_y(self, y: torch.Tensor, n: int, *, sampling: bool = False) -> torch.Tensor:
        """Labels ``(n,)`` for ``n`` rows of x, ``-1`` marking unlabelled rows.

        With ``sampling=True`` they are the classes ``sample(n, y)`` generates: ``n`` must
        be a whole number >= 0, one class id stands for all ``n`` rows and ``-1`` is refused.
        """
        if sampling and (isinstance(n, bool) or not hasattr(n, "__index__") or n < 0):
            raise UserError(f"sample(n={n!r}): n must be a whole number >= 0")
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        if sampling and y.dim() == 0:
            y = y.expand(n)
        if y.shape != (n,):
            rows = f"for {n} samples" if sampling else f"but x has {n} rows"
            expected = f"({n},) or one class id" if sampling else f"({n},)"
            raise UserError(f"y has shape {tuple(y.shape)} {rows}; expected {expected}")
        low, unlabelled = (0, "") if sampling else (-1, " (-1 = unlabelled)")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise UserError(f"y must hold integer class ids{unlabelled}, not {y.dtype}")
        k = self.config.num_classes
        if n and (y.min() < low or y.max() >= k):
            what = "classes to sample" if sampling else "labels"
            raise UserError(
                f"{what} must be in {low}..{k - 1}{unlabelled}; "
                f"got {y.min().item()}..{y.max().item()}"
            )
        return y.to(self.device, torch.long)

    def check_batch(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``check_x`` and ``check_y`` on a training batch, once per batch: SVI hands the
        same tensors to ``model`` and ``guide``, and the checks read every pixel."""
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            # Weak references, so the cache never keeps a batch alive; the version
            # counters catch in-place edits between two calls.
            refs = self._last_checked_batch
            key = (x._version, y._version)
            if refs is not None and refs[0]() is x and refs[1]() is y and refs[2] == key:
                x_checked, y_checked = refs[3](), refs[4]()
                if x_checked is not None and y_checked is not None:
                    return x_checked, y_checked
        x_checked = self.check_x(x)
        y_full = torch.full((len(x_checked),), -1, dtype=torch.long) if y is None else y
        y_checked = self.check_y(y_full, len(x_checked))
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            self._last_checked_batch = (
                weakref.ref(x), weakref.ref(y), (x._version, y._version),
                weakref.ref(x_checked), weakref.ref(y_checked),
            )  # fmt: skip
        return x_checked, y_checked


def _mean_of(fn: dist.Distribution, num_samples: int) -> torch.Tensor:
    """The mean of a guide distribution; a Monte Carlo mean where it has no closed form
    (flows; zuko distributions only ``rsample``)."""
    try:
        return fn.mean
    except (NotImplementedError, AttributeError):
        return fn.rsample((num_samples,)).mean(0)
