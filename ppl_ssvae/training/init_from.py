"""Start a model from a trained run (``fit(..., init_from=RUN)``, ``train --init-from RUN``).

Every weight the two models share is copied: the encoder, decoder and classifier, the
context encoders of the guide and each latent's Gaussian head, which in a flow guide is
the flow's base (:mod:`ppl_ssvae.guides.flows`). A flow's transforms start at the identity,
so a flow started from a converged Gaussian run is that run's guide at the first step, and
training adds flow steps to a converged model instead of starting from scratch.

The run must be of the same model and sizes; anything else is refused in one line before
a weight is copied.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..nn import Conditional, DiagonalGaussian
from ..runs.directory import BEST, RunDir

# Config-derived buffers: the class prior comes from this run's config and data.
_FROM_CONFIG = ("prior",)


def init_from(model: nn.Module, run: str | Path | RunDir, checkpoint: str = BEST) -> dict:
    """Copy into ``model`` every weight it shares with ``run``'s ``checkpoint`` (best.pt).

    Returns the record config.json keeps: the run, checkpoint, its epoch and SHA-256, and
    how many tensors were copied.

    Raises:
        UserError: ``run`` is not a run, holds another model, or has weights of other
            shapes, or lacks one this model needs (anything but a flow's transforms).
    """

    run = run if isinstance(run, RunDir) else RunDir(run)
    config = run.read_config()
    where = f"--init-from {run.path}"
    if config["model"].get("model") != model.name:
        raise UserError(
            f"{where} trained model {config['model'].get('model')!r}, not {model.name!r}; "
            "start from a run of the same model"
        )
    source, record = _trained(run, config, where, checkpoint)
    pairs = _same_shapes(model, source, shared_weights(model, source), where)
    missing = [
        k
        for k in model.state_dict()
        if k not in pairs and k.split(".")[-1] not in _FROM_CONFIG and not _in_transforms(model, k)
    ]
    if missing:
        raise UserError(
            f"{where} has no weights for this model's {missing[0]} (and {len(missing) - 1} "
            "more): the two models differ in more than their guide family"
        )
    theirs = source.state_dict()
    with torch.no_grad():
        mine = model.state_dict()
        for key, other in pairs.items():
            mine[key].copy_(theirs[other])
    return {**record, "copied": len(pairs)}


def _trained(run: RunDir, config: dict, where: str, checkpoint: str) -> tuple[nn.Module, dict]:
    """The model ``run``'s ``config`` describes, with ``checkpoint``'s weights (checksums
    verified), and the record config.json keeps of it: run, checkpoint, epoch, SHA-256."""
    from .. import models

    try:
        source = models.from_config(config["model"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    state = run.load_weights(source, checkpoint)
    digest = run.file(checkpoint + ".sha256")
    return source, {
        "run": str(run.path),
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "sha256": digest.read_text().strip() if digest.is_file() else None,
    }


def shared_weights(model: nn.Module, source: nn.Module) -> dict[str, str]:
    """``model`` key -> ``source`` key for every weight the two share: the same name, or
    the Gaussian head of the same latent guide wherever each keeps it (the head itself,
    or a flow's base). Config-derived buffers (the class prior) are not shared."""
    theirs = source.state_dict()
    pairs = {
        k: k for k in model.state_dict() if k in theirs and k.split(".")[-1] not in _FROM_CONFIG
    }
    modules = dict(source.named_modules())
    for name, guide in model.named_modules():
        other = modules.get(name)
        if not (isinstance(guide, Conditional) and isinstance(other, Conditional)):
            continue
        mine, yours = _gaussian(guide.head), _gaussian(other.head)
        if mine is None or yours is None:
            continue
        for key in mine[1].state_dict():
            pairs[_join(name, "head", mine[0], key)] = _join(name, "head", yours[0], key)
    return pairs


def _gaussian(head: nn.Module) -> tuple[str, nn.Module] | None:
    """The diagonal Gaussian a guide head is or refines (its relative name), if any."""
    return next(((n, m) for n, m in head.named_modules() if type(m) is DiagonalGaussian), None)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _in_transforms(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is a flow's own weight: inside a latent guide's head, outside its
    Gaussian base (these start at the identity)."""
    for name, guide in model.named_modules():
        if isinstance(guide, Conditional) and key.startswith(_join(name, "head") + "."):
            base = _gaussian(guide.head)
            return base is None or not key.startswith(_join(name, "head", base[0]) + ".")
    return False


def _same_shapes(
    model: nn.Module, source: nn.Module, pairs: dict[str, str], where: str
) -> dict[str, str]:
    """``pairs`` less a flow's transforms of other sizes (not shared: they start at the
    identity); any other weight of another shape is refused."""
    mine, theirs = model.state_dict(), source.state_dict()
    kept = {}
    for key, other in pairs.items():
        if mine[key].shape == theirs[other].shape:
            kept[key] = other
        elif not _in_transforms(model, key):
            raise UserError(
                f"{where} has {other} of shape {tuple(theirs[other].shape)}, this model "
                f"{tuple(mine[key].shape)}: start from a run of the same sizes"
            )
    return kept


def init_parts(model: nn.Module, checkpoint: str = BEST) -> dict:
    """Copy into each part of ``model`` the weights of the trained run its config names
    (``model.parts_from_runs``: config field -> (submodule, the model the run must hold);
    ``m1-m2``'s ``m1 = RUN``). The run is read as ``init_from`` reads one: config.json,
    then ``checkpoint`` (best.pt) under the run directory's checksums.

    Returns the record config.json keeps per field: the run, checkpoint, its epoch and
    SHA-256; {} when the config names no run.

    Raises:
        UserError: the run holds another model, or a model of other inputs or sizes than
            the part; before a weight is copied.
    """

    records = {}
    for field, (attr, kind) in model.parts_from_runs.items():
        path = getattr(model.config, field)
        if path is None:
            continue
        run = RunDir(path)
        where = f"--{field.replace('_', '-')} {run.path}"
        config = run.read_config()
        trained = (config.get("model") or {}).get("model")
        if trained != kind:
            raise UserError(
                f"{where} trained model {trained!r}; {model.name} needs an {kind!r} run"
            )
        part = getattr(model, attr)
        mine, theirs = (
            part.config.to_dict(),
            {k: v for k, v in config["model"].items() if k != "model"},
        )
        differ = [
            f"{k}={_plain(theirs.get(k))} (this model: {_plain(mine[k])})"
            for k in ("input_dim", "likelihood", "z_dim", "hidden", "activation", "sigma2",
                      "guide", "guide_args")
            if _plain(theirs.get(k)) != _plain(mine[k])
        ]  # fmt: skip
        if differ:
            raise UserError(f"{where} has another {kind}: {', '.join(differ)}")
        source, records[field] = _trained(run, config, where, checkpoint)
        part.load_state_dict(source.state_dict())
    return records


def _plain(value: object) -> object:
    """A config value as JSON reads it back (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
