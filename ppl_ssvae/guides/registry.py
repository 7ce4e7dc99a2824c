"""Guide families by name: the posterior family of every continuous latent (z, and a).

A family is a *head*: a function ``head(features, out_dim, **guide_args) -> nn.Module``
whose module maps the shared context features ``h`` (:class:`~ppl_ssvae.nn.ContextEncoder`
output) to a distribution over ``out_dim`` units. :func:`build_latent_guide` puts it on a
context encoder, giving a module with the library's one call convention::

    q = build_latent_guide("maf", out_dim=50, inputs={"x": 784, "y": 10}, hidden=(500,))
    q(x=x, y=torch.arange(10)[:, None])   # batch shape (10, B), event shape (50,)

A new family is one file with its head function plus one line in :data:`GUIDES`; the
keyword defaults of the head function are its ``guide_args``, validated by name and type
(a ``Literal`` annotation lists a text argument's choices). The contract test over
model x guide (tests/models/test_contract.py) picks it up.

A head function outside the library is named by its import path, ``"pkg.module:factory"``
(``--guide pkg.module:factory``), and recorded as such in the config. Reading a config
never imports a module by itself: the module must be named by the user, which
:func:`trusted_guide_modules` says (``build`` and ``ppl-ssvae train --guide`` do so for
the guide they are given; ``--trust-guide MODULE`` for a run that is read back).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError, check_like_default
from ..nn import Conditional, ContextEncoder
from . import flows, full_gaussian, gaussian, planar, pyro_flows, radial, zuko_flows

# The config value of a guide given as a module (models.build(name, guide=module)).
CUSTOM = "custom"
DEFAULT = "gaussian"


@dataclass(frozen=True)
class GuideFamily:
    """A guide family: its head function and a one-line description (for ``--help``)."""

    head: Callable[..., nn.Module]
    summary: str

    @property
    def defaults(self) -> dict[str, Any]:
        """The family's ``guide_args`` and their defaults (the head's keyword arguments)."""
        params = list(inspect.signature(self.head).parameters.values())[2:]
        return {p.name: p.default for p in params}


GUIDES: dict[str, GuideFamily] = {
    "gaussian": GuideFamily(gaussian.diagonal_gaussian, "diagonal Gaussian (default)"),
    "full-gaussian": GuideFamily(full_gaussian.FullGaussian, "Gaussian, full covariance"),
    "lowrank-gaussian": GuideFamily(full_gaussian.LowRankGaussian, "Gaussian, low-rank + diag"),
    "maf": GuideFamily(zuko_flows.maf, "zuko masked autoregressive flow, sampled as an IAF"),
    "nsf": GuideFamily(zuko_flows.nsf, "zuko neural spline flow, sampled in one pass"),
    "realnvp": GuideFamily(zuko_flows.realnvp, "zuko RealNVP affine coupling flow"),
    "pyro-iaf": GuideFamily(pyro_flows.iaf, "Pyro conditional affine autoregressive (IAF)"),
    "pyro-spline": GuideFamily(pyro_flows.spline, "Pyro conditional autoregressive spline"),
    "planar": GuideFamily(planar.planar, "Pyro conditional planar flow (Rezende & Mohamed)"),
    "radial": GuideFamily(radial.radial, "Pyro conditional radial flow (Rezende & Mohamed)"),
}


def register_guide(name: str, head: Callable[..., nn.Module], summary: str) -> None:
    """Add a guide family: ``head(features, out_dim, **guide_args)`` returns a module
    mapping context features to a distribution over ``out_dim`` units (see the module
    docstring); its keyword defaults are its ``guide_args``. The family is then a
    ``--guide`` choice and every model with continuous latents takes it."""
    if name in GUIDES and GUIDES[name].head is not head:
        raise UserError(f"a guide family named {name!r} is already registered")
    if not callable(head):
        raise UserError(f"register_guide({name!r}) needs a head function, got {head!r}")
    GUIDES[name] = GuideFamily(head, summary)


def guide_names() -> list[str]:
    """Every registered family name, for ``--guide`` choices."""
    return list(GUIDES)


def describe_guides() -> str:
    """One line per family: name, description and its ``guide_args`` with defaults."""
    lines = []
    for name, family in GUIDES.items():
        args = ", ".join(f"{k}={v!r}" for k, v in family.defaults.items()) or "no guide_args"
        lines.append(f"{name}: {family.summary} ({args})")
    return "\n".join(lines)


def family(name: str) -> GuideFamily:
    """The family ``name``: a key of :data:`GUIDES` or a trusted ``"pkg.module:factory"``."""
    if name in GUIDES:
        return GUIDES[name]
    if is_import_path(name):
        return _imported(name)
    raise UserError(
        f"unknown guide {name!r}; choose one of {', '.join(GUIDES)}, or a head function "
        "as pkg.module:factory"
    )


# -- guides imported by path -----------------------------------------------------------------
_TRUSTED: ContextVar[frozenset[str]] = ContextVar("trusted_guide_modules", default=frozenset())


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a head function by import path (``"pkg.module:factory"``)."""
    return isinstance(name, str) and ":" in name


@contextlib.contextmanager
def trusted_guide_modules(*names: str) -> Iterator[None]:
    """Within this block, guides named by import path may import these modules (given as
    ``"pkg.module"`` or ``"pkg.module:factory"``); other names are ignored."""
    modules = {n.partition(":")[0] for n in names if n}
    token = _TRUSTED.set(_TRUSTED.get() | modules)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _imported(path: str) -> GuideFamily:
    module_name, _, attr = path.partition(":")
    if not (all(p.isidentifier() for p in module_name.split(".")) and attr.isidentifier()):
        raise UserError(f"guide {path!r} must look like pkg.module:factory")
    if module_name not in _TRUSTED.get():
        raise UserError(
            f"guide {path!r} imports module {module_name!r}, which a saved config may not "
            f"import by itself; name it to allow it (--trust-guide {module_name}, or "
            f"trusted_guide_modules({module_name!r}) in Python)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"guide {path!r}: cannot import {module_name!r} ({e})") from None
    head = getattr(module, attr, None)
    if not callable(head):
        raise UserError(f"guide {path!r}: {module_name} has no function {attr!r}")
    params = list(inspect.signature(head).parameters.values())
    if len(params) < 2 or any(p.default is inspect.Parameter.empty for p in params[2:]):
        raise UserError(
            f"guide {path!r} must be a head function factory(features, out_dim, **guide_args) "
            "whose guide_args all have defaults"
        )
    summary = (inspect.getdoc(head) or path).splitlines()[0]
    return GuideFamily(head, summary)


def resolve_guide_args(name: str, guide_args: Mapping[str, Any]) -> dict[str, Any]:
    """``guide_args`` checked against family ``name`` and completed with its defaults.

    Lists (from JSON) become tuples, so a config round trip gives equal values.
    """
    spec = family(name)
    defaults = spec.defaults
    unknown = sorted(set(guide_args) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise UserError(f"guide {name!r} has no guide_args {unknown}; valid: {valid}")
    resolved = dict(defaults)
    for key, value in guide_args.items():
        resolved[key] = check_like_default(
            f"guide {name!r} guide_args {key}", value, defaults[key], _choices(spec.head, key)
        )
    return resolved


def legacy_guide_args(name: str, guide_args: Mapping[str, Any]) -> dict[str, Any]:
    """The ``guide_args`` of a saved config as its family reads them today. A flow's
    config saved before bases existed holds every argument but ``base`` (configs record
    all of them): it was trained on a standard-normal base, and rebuilds so."""
    args = dict(guide_args)
    if name in flows.LEGACY_FAMILIES and "base" not in args:
        others = set(family(name).defaults) - {"base"}
        if others <= set(args):
            args["base"] = flows.STANDARD
    return args


def _choices(head: Callable[..., Any], key: str) -> tuple[Any, ...] | None:
    """The values a ``Literal``-annotated argument admits (None: not a Literal)."""
    try:
        annotation = inspect.signature(head, eval_str=True).parameters[key].annotation
    except (NameError, TypeError, KeyError):
        return None
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def build_latent_guide(
    name: str,
    out_dim: int,
    inputs: Mapping[str, int],
    hidden: Sequence[int],
    activation: str = "relu",
    *,
    embed: Mapping[str, nn.Module] | None = None,
    **guide_args: Any,
) -> Conditional:
    """``q(latent | inputs)`` of family ``name`` on a shared context encoder.

    Args:
        name: a key of :data:`GUIDES`.
        out_dim: the latent's size.
        inputs: input name -> size in call order (``{"x": D, "a": A, "y": K}``); the size of
            ``"y"`` is the number of classes.
        hidden: the context encoder's hidden sizes; ``h`` has ``hidden[-1]`` features.
        activation: the encoder's activation.
        embed: trunks run on inputs first (a conv trunk on x), as for
            :class:`~ppl_ssvae.nn.ContextEncoder`.
        guide_args: the family's own arguments (see :func:`describe_guides`).

    Returns:
        A module called as ``q(x=..., y=..., a=...)`` returning a distribution with batch
        shape the broadcast of the inputs' leading dims and event shape ``(out_dim,)``.
    """
    spec = family(name)
    args = resolve_guide_args(name, guide_args)
    trunk = ContextEncoder(inputs, hidden, activation, embed)
    return Conditional(trunk, spec.head(trunk.features, out_dim, **args))
