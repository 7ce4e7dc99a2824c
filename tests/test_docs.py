"""The documentation site covers the package: every public module has an API page, every
public function and class is rendered on one, and the tutorials are committed clean.

The site itself is built (strict, tutorials executed) by ``.ci/run``, not here.
"""

from __future__ import annotations

import importlib
import inspect
import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = runpy.run_path(str(ROOT / "docs" / "gen_pages.py"), run_name="gen_pages")
PAGES = GEN["reference_pages"]()


def page_of(module: str) -> str:
    return next(body for body in PAGES.values() if body.startswith(f"::: {module}\n"))


def test_every_public_module_has_a_page_and_only_deprecated_aliases_are_skipped():
    modules = GEN["public_modules"]()
    assert len(PAGES) == len(modules)
    for module in modules:
        assert page_of(module)
    for module in GEN["SKIPPED"]:
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
        assert "Deprecated" in source or "moved" in source, module


@pytest.mark.parametrize("module", GEN["public_modules"](), ids=str)
def test_every_public_definition_is_rendered(module):
    body = page_of(module)
    names = GEN["defined_names"](module)
    if "members:" in body:  # a package page lists what its __init__ defines
        listed = body.split("members:", 1)[1].split("\n", 1)[0].strip()
        assert listed == "false" if not names else all(n in listed for n in names)
    # A module page renders every public member (mkdocstrings' default filters).
    imported = importlib.import_module(module)
    for name in getattr(imported, "__all__", []):
        obj = getattr(imported, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        home = obj.__module__
        if not home.startswith("ppl_ssvae"):
            continue
        # A re-export is documented where it is defined, which must have a page.
        assert page_of(home), (module, name, home)
        assert obj.__name__ in GEN["defined_names"](home), (module, name, home)


def test_a_new_module_would_get_a_page(tmp_path, monkeypatch):
    package = tmp_path / "ppl_ssvae"
    (package / "newpart").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "newpart" / "__init__.py").write_text("def helper():\n    pass\n")
    (package / "newpart" / "thing.py").write_text("class Thing:\n    pass\n")
    (package / "_private.py").write_text("")
    monkeypatch.setitem(GEN["reference_pages"].__globals__, "ROOT", tmp_path)
    monkeypatch.setitem(GEN["reference_pages"].__globals__, "PACKAGE", package)
    pages = GEN["reference_pages"]()
    assert set(pages) == {
        "ppl_ssvae/index.md",
        "ppl_ssvae/newpart/index.md",
        "ppl_ssvae/newpart/thing.md",
    }
    assert "members: [helper]" in pages["ppl_ssvae/newpart/index.md"]


TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))


def test_tutorials_are_in_the_nav_and_committed_without_outputs():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert TUTORIALS
    for path in TUTORIALS:
        assert f"tutorials/{path.name}" in nav, path.name
        cells = json.loads(path.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), path.name


def test_results_page_links_land_on_pages():
    files = GEN["results_pages"]()
    assert "index.md" in files
    page = files["index.md"]
    assert "](../README.md" not in page  # the repository README is the site's home
    for folder in {p.split("/")[0] for p in files if "/" in p}:
        assert f"{folder}/index.md" in files or f"{folder}/README.md" in files, folder


def test_readme_and_home_page_give_the_same_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    home = (ROOT / "docs" / "index.md").read_text()
    for command in ("bash .ci/setup && ppl-ssvae train", "bash .ci/run"):
        line = next(line for line in readme.splitlines() if line.startswith(command))
        assert line in home.splitlines(), command


def test_readme_links_resolve():
    import re

    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), target


def test_display_math_stands_in_its_own_block():
    # arithmatex takes \[ ... \] as math only as a block of its own; glued to the text or
    # to the equation before it, the TeX is rendered as Markdown.
    for page in sorted((ROOT / "docs").rglob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == r"\[":
                assert i == 0 or not lines[i - 1].strip(), f"{page.name}:{i + 1}"
