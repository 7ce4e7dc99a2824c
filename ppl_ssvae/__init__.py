"""ppl-ssvae: semi-supervised deep generative models in Pyro."""

from __future__ import annotations

from typing import Any

from . import moved

# The one place the version is written (pyproject.toml reads it); SemVer, see CHANGELOG.md.
__version__ = "0.2.0"

# Old module paths (``ppl_ssvae.rundir``, ...) stay importable for one release.
moved.install()

# Imported on first use, so that `import ppl_ssvae` stays light (no scikit-learn).
_LAZY = {"SSVAEClassifier": "sklearn", "SSVAEClusterer": "sklearn"}

__all__ = ["SSVAEClassifier", "SSVAEClusterer", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
