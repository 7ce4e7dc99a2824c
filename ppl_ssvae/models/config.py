"""A model's configuration: one dataclass per family (``ModelConfig`` and its subclasses),
checked field by field against its annotations when it is built, so that a crafted
``config.json`` or a bad flag is refused in one line before any network is allocated."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from ..errors import UserError
from ..guides.registry import (
    CUSTOM,
    DEFAULT,
    resolve_guide_args,
)
from ..nn.nets import check_net, family

# What ``guide=`` accepts besides a family name in the config: a module for z, or one module


@dataclasses.dataclass
class ModelConfig:
    """Fields shared by every model; subclasses add their own.

    Attributes:
        input_dim: size of a flattened input row.
        num_classes: |y|, the classes of the model (the data's K plus any extra ones).
        likelihood: p(x|.): ``"bernoulli"`` (pixels in [0, 1]) or ``"gaussian"`` [by the
            data's support].
        init_std: None keeps torch's initialisation; a number draws kernels from
            N(0, init_std^2) with zero biases (Willetts et al. App. B: 0.001).
        init_layers: ``"all"`` kernels (App. B's text) or ``"heads"``, the output layers
            only (the authors' code; the other kernels Glorot-normal).
        guide: the guide family of every continuous latent (``ppl_ssvae.guides.GUIDES``).
        guide_args: that family's arguments.
    """

    input_dim: int
    num_classes: int
    likelihood: str = "bernoulli"
    # None keeps torch's default initialisation; a number draws kernels from
    # N(0, init_std^2) with zero biases (Willetts et al. App. B use 0.001): every kernel
    # with init_layers="all" (App. B's text), the output layers only with "heads" (the
    # authors' released code; the other kernels Glorot-normal).
    init_std: float | None = None
    init_layers: str = "all"
    # The posterior family of every continuous latent of the guide (z, and a where the
    # model has one): a name in ppl_ssvae.guides.GUIDES, and that family's own arguments
    # (completed with its defaults here, so the config records exactly what was built).
    # "custom" marks a guide module passed in Python (models.build(name, guide=module)).
    guide: str = DEFAULT
    guide_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    # Fields that may be 0 or negative are named here; every other number must be > 0
    # (a zero-width layer or zero variance trains silently to chance, so it is refused).
    may_be_zero: ClassVar[frozenset[str]] = frozenset({"alpha", "beta", "dropout"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(type(self).__name__, f.name, str(f.type), getattr(self, f.name),
                         f.name in self.may_be_zero)  # fmt: skip
        if self.guide == CUSTOM:
            if self.guide_args:
                raise UserError("guide_args apply to a guide family by name, not to 'custom'")
        else:
            self.guide_args = resolve_guide_args(self.guide, self.guide_args)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise UserError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fields)


def _check_field(owner: str, name: str, annotation: str, value: Any, may_be_zero: bool) -> None:
    """Refuse a config value whose type or range the field cannot hold, naming the field
    (``--model-arg z_dim=abc`` would otherwise fail deep inside torch, or train a
    zero-width net)."""
    optional = annotation.endswith("| None")
    kind = annotation.removesuffix("| None").strip()
    if value is None:
        if not optional:
            raise UserError(f"{owner}.{name} must not be None")
        return
    if kind.startswith("dict["):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{owner}.{name} must be a mapping of names to values, got {value!r}")
        return
    if kind.startswith("tuple["):
        item = kind[len("tuple[") :].split(",")[0].strip()
        if not isinstance(value, (tuple, list)):
            raise UserError(f"{owner}.{name} must be a list of {item}s, got {value!r}")
        for v in value:
            _check_scalar(owner, name, item, v, may_be_zero)
        return
    _check_scalar(owner, name, kind, value, may_be_zero)


def _check_scalar(owner: str, name: str, kind: str, value: Any, may_be_zero: bool) -> None:
    what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
    if kind not in what:
        return
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise UserError(f"{owner}.{name} must be {what[kind]}, got {value!r}")
    if kind in ("int", "float"):
        bound_ok = value >= 0 if may_be_zero else value > 0
        if not (math.isfinite(value) and bound_ok):
            limit = ">= 0" if may_be_zero else "> 0"
            raise UserError(f"{owner}.{name} must be finite and {limit}, got {value!r}")


@dataclasses.dataclass
class NetConfig(ModelConfig):
    """A model config whose networks are chosen by name (``ppl_ssvae.nn.NETS``).

    Attributes:
        net: the networks of every part that reads x or generates it: ``"dense"`` (MLPs on
            the flattened x, the default) or ``"conv"`` (a strided conv trunk under every
            encoder and a deconvolutional decoder; images only); the pi-VAE's own ``net``
            is dense, cnn or rnn.
        net_args: that family's arguments (conv: ``channels``, e.g. ``channels=[32,64]``).
        image_shape: (C, H, W) of the flattened images, which image nets need; filled in
            from image data (None for other data, when a feature mask drops pixels, or for
            a net that reads no images).
    """

    net: str = "dense"
    net_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not family(self.net).needs_image:
            # Only image nets read the shape: a dense model's config is then the same
            # whether or not its data recipe knew one (a CLI run resumes from Python).
            self.image_shape = None
        # Completed with the family's defaults, so the config records what was built.
        self.net_args = check_net(self.net, self.net_args, self.input_dim, self.image_shape)
