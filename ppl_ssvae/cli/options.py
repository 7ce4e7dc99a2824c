"""Command-line options generated from the run spec's dataclass fields.

Each field of ``DataSpec``, ``FitSettings`` and of every registered model's config becomes
one ``--flag`` with the field's type and the help text of its docstring's ``Attributes:``
entry; no option is written out by hand here. Options not given stay out of the parsed
namespace (``argparse.SUPPRESS``), so a config file's values and a resume's recorded
values are overridden only by what the user actually typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from ..runs.files import json_value, key_values

# Fields that are not options: the data decides them, or another option spells them.
NOT_OPTIONS = {"input_dim", "num_classes", "guide", "guide_args", "progress", "optimizer_args",
               "lr_scheduler_args"}  # fmt: skip


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of the docstrings of ``cls`` and its bases (Google
    style), by field name; an entry naming several fields (``a, b: ...``) documents each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
    doc = inspect.cleandoc(doc)
    if "Attributes:" not in doc:
        return {}
    lines = doc.split("Attributes:", 1)[1].splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in lines[1:]:
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^    (\w[\w, ]*):\s*(.*)$", line)
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                docs[name] = entry.group(2).strip()
        elif names and line.strip():
            for name in names:
                docs[name] += " " + line.strip()
    return docs


def callback_option(text: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (``--callback``) as a callback record."""
    name, _, args = text.partition(":")
    items = [a for a in args.split(",") if a.strip()] if args else []
    return {"name": name.strip(), "args": key_values(items, "--callback")}


def _number_list(kind: type) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _scalar_or_text(text: str) -> Any:
    value = json_value(text)
    return value if isinstance(value, (int, float, str)) else text


class _KeyValues(argparse.Action):
    """A mapping field's option, ``--net-args KEY=VALUE``, repeatable: each adds an entry
    (the value parsed as JSON, else kept as text)."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option_string: Any = None) -> None:
        entries = dict(getattr(namespace, self.dest, None) or {})
        entries.update(key_values([value], option_string))
        setattr(namespace, self.dest, entries)


def add_field(group: Any, name: str, annotation: str, help_text: str, dest: str) -> None:
    """One ``--name`` option for a dataclass field of type ``annotation``."""
    flag = "--" + name.replace("_", "-")
    kind = annotation.replace(" | None", "").strip()
    # argparse %-formats help: a docstring's "70%" would crash --help.
    help_text = help_text.replace("%", "%%")
    common = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text or None}
    if kind == "bool":
        group.add_argument(flag, action="store_true", **common)
        group.add_argument("--no-" + name.replace("_", "-"), action="store_false", **{
            **common, "help": f"the opposite of {flag}"})  # fmt: skip
    elif kind == "int":
        group.add_argument(flag, type=int, metavar="N", **common)
    elif kind == "float":
        group.add_argument(flag, type=float, metavar="X", **common)
    elif kind == "str":
        group.add_argument(flag, metavar="TEXT", **common)
    elif kind.startswith("tuple[int"):
        group.add_argument(flag, type=_number_list(int), metavar="N,N", **common)
    elif kind.startswith("tuple[float"):
        group.add_argument(flag, type=_number_list(float), metavar="X,X", **common)
    elif kind.startswith("dict["):
        common["help"] = f"{help_text} (repeatable)" if help_text else "repeatable"
        group.add_argument(flag, action=_KeyValues, metavar="KEY=VALUE", **common)
    else:  # unions of scalars (labelled_share: "1:1" or 0.5)
        group.add_argument(flag, type=_scalar_or_text, metavar="VALUE", **common)


def add_dataclass(group: Any, cls: type, prefix: str, skip: set[str] = NOT_OPTIONS) -> None:
    """An option per field of dataclass ``cls``; parsed into ``PREFIX.field``."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            add_field(group, f.name, str(f.type), docs.get(f.name, ""), f"{prefix}.{f.name}")


def model_fields() -> dict[str, tuple[str, str, list[str]]]:
    """Every config field of every registered model: its type, help and the models that
    have it (``--z-dim`` exists once, for all models with a z)."""
    from ..models import MODELS

    fields: dict[str, tuple[str, str, list[str]]] = {}
    for name, cls in MODELS.items():
        docs = {**field_docs(cls.config_class)}
        for f in dataclasses.fields(cls.config_class):
            if f.name in NOT_OPTIONS:
                continue
            kind, text, owners = fields.get(f.name, (str(f.type), docs.get(f.name, ""), []))
            fields[f.name] = (kind, text or docs.get(f.name, ""), [*owners, name])
    return fields


def add_model_fields(group: Any) -> None:
    from ..models import MODELS

    everyone = len(MODELS)
    for name, (kind, text, owners) in sorted(model_fields().items()):
        who = "" if len(owners) == everyone else f" [{', '.join(owners)}]"
        add_field(group, name, kind, (text + who).strip(), f"model.options.{name}")


def given(namespace: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, nested by section: ``{"fit": {"lr": ...}, ...}``."""
    nested: dict[str, Any] = {}
    for dest, value in vars(namespace).items():
        if "." not in dest:
            continue
        *path, leaf = dest.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def number_text(value: float | None) -> str:
    """A metric as the commands print it: 4 decimals, ``n/a`` for missing or NaN."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


TRUST_HELP = ("load a checkpoint whose .sha256 checksum file is missing or malformed, with a "
              "warning (a run that wrote checksums refuses it otherwise)")  # fmt: skip


def add_trust_guide(parser: Any) -> None:
    parser.add_argument("--trust-guide", action="append", metavar="MODULE", default=[],
                        help="allow importing MODULE for a guide a run names by import path "
                        "(pkg.module:factory); never done without it, repeatable")  # fmt: skip
