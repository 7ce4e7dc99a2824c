"""Run specs as files: TOML (read with the standard library's ``tomllib``) or YAML (with
PyYAML, the ``yaml`` extra), and back to TOML (``ppl-ssvae train --print-config``).

A spec file has the sections of :class:`~ppl_ssvae.runs.RunSpec`::

    [data]
    dataset = "fashion-mnist"
    labels = 100

    [model]
    name = "m2"
    options = { z_dim = 50, hidden = [500] }

    [fit]
    epochs = 30
    lr_scheduler = "CosineAnnealingLR"
    lr_scheduler_args = { T_max = 30 }

    [[callbacks]]
    name = "kl_warmup"
    args = { epochs = 10 }
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping a ``.toml`` / ``.yaml`` / ``.yml`` / ``.json`` spec file holds."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file; give a TOML or YAML run spec")
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
        if suffix == ".toml":
            values = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            values = _yaml(text, path)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise UserError(f"--config {path}: use a .toml, .yaml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--config {path} does not parse ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a mapping of sections ([data], [model], ...)")
    return values


def _yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise UserError(
            f"--config {path}: YAML needs PyYAML (pip install 'ppl-ssvae[yaml]'), or use TOML"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def to_toml(spec: dict[str, Any]) -> str:
    """A spec dict (``RunSpec.to_dict()``) as TOML that ``read_spec_file`` reads back to
    the same spec. TOML has no null: a field left at a None default is left out, and any
    other None (``sigma2 = None`` for a learned variance) is refused in one line rather
    than written as a default it is not."""
    from .spec import SECTIONS

    lines = [f"version = {toml_value(spec.get('version', 1))}"]
    for key in ("evaluator", "init_from"):
        if spec.get(key) is not None:
            lines.append(f"{key} = {toml_value(spec[key])}")
    for section in ("data", "model", "fit"):
        lines += ["", f"[{section}]"]
        defaults = _defaults(SECTIONS[section])
        for key, value in spec.get(section, {}).items():
            if value is not None:
                lines.append(f"{key} = {toml_value(value, where=f'{section}.{key}')}")
            elif defaults.get(key) is not None:
                raise UserError(_no_null(f"{section}.{key}"))
    for callback in spec.get("callbacks", []):
        lines += ["", "[[callbacks]]", f"name = {toml_value(callback['name'])}",
                  f"args = {toml_value(callback.get('args') or {}, 'callbacks.args')}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _no_null(key: str) -> str:
    return (f"{key} = None has no TOML form (TOML has no null); write the spec as JSON "
            "or YAML instead")  # fmt: skip


def toml_value(value: Any, where: str = "a run spec") -> str:
    """``value`` as a TOML value; ``where`` names the key or file in the one-line refusal
    of a value TOML cannot hold (non-finite numbers, None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{value} has no TOML form in {where}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                raise UserError(_no_null(f"{where}.{k}"))
        items = ", ".join(f"{toml_key(k)} = {toml_value(v, f'{where}.{k}')}"
                          for k, v in value.items())  # fmt: skip
        return "{ " + items + " }" if items else "{}"
    raise UserError(f"{value!r} has no TOML form in {where}")


def toml_key(key: str) -> str:
    """A bare TOML key where it may be one, else a quoted one."""
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def json_value(text: str) -> Any:
    """A command-line value as JSON where it parses (numbers, lists, true...), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value parsed as JSON (else kept as text)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} must look like KEY=VALUE")
        values[key.strip().replace("-", "_")] = json_value(value)
    return values
