"""The release metadata agree: one version, written in ppl_ssvae/__init__.py, is what the
package metadata, the command, CITATION.cff and the changelog's newest release say."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import ppl_ssvae
from ppl_ssvae.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


def test_the_version_is_semver_and_written_once():
    assert SEMVER.match(ppl_ssvae.__version__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # A literal, so setuptools reads it without importing the package (and torch).
    source = (ROOT / "ppl_ssvae" / "__init__.py").read_text()
    assert len(re.findall(r'^__version__ = "[^"]+"$', source, re.M)) == 1
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ppl_ssvae.__version__"}


def test_the_command_prints_the_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"ppl-ssvae {ppl_ssvae.__version__}"


def test_citation_and_changelog_name_the_current_release():
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(ppl_ssvae.__version__)}$", citation, re.M)
    released = re.search(r"^date-released: (\S+)$", citation, re.M).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d\d-\d\d)$", changelog, re.M)
    assert releases[0] == (ppl_ssvae.__version__, released)
    assert "## [Unreleased]" in changelog.split(f"## [{releases[0][0]}]")[0]


def test_the_readme_and_the_docs_home_name_the_current_version():
    for page in ("README.md", "docs/index.md"):
        text = (ROOT / page).read_text()
        assert f"Version {ppl_ssvae.__version__} (" in text, page
