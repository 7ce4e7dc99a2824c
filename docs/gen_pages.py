"""Pages generated at build time (mkdocs-gen-files): the API reference, one page per
public module found by walking the package, so a module added later appears without
editing anything; and the results page with the files it links to.

``reference_pages()`` is also what ``tests/test_docs.py`` checks the package against.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ppl_ssvae"
RESULTS = ROOT / "results"

# Deprecated aliases kept for one release (their content is documented at the new paths),
# and the import hook that serves the old paths.
SKIPPED = {"ppl_ssvae.moved", "ppl_ssvae.nets", "ppl_ssvae.train"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def public_modules() -> list[str]:
    """Every module of the package a user may import, packages included."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if any(part.startswith("_") for part in name.split(".")) or name in SKIPPED:
            continue
        names.append(name)
    return names


def defined_names(module: str) -> list[str]:
    """The public functions and classes a module defines itself (not those it imports)."""
    tree = ast.parse(source_of(module).read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n.name for n in tree.body if isinstance(n, kinds) and not n.name.startswith("_")]


def is_package(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").is_file()


def source_of(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def contents(package: str) -> str:
    """A package page's table of its modules and subpackages, with their summaries."""
    rows = []
    for module in public_modules():
        parent, _, name = module.rpartition(".")
        if parent != package:
            continue
        doc = ast.get_docstring(ast.parse(source_of(module).read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")
        link = f"{name}/index.md" if is_package(module) else f"{name}.md"
        rows.append(f"| [`{module}`]({link}) | {first} |")
    if not rows:
        return ""
    return "\n## Modules\n\n| module | |\n|---|---|\n" + "\n".join(rows) + "\n"


def reference_pages() -> dict[str, str]:
    """Page path (under reference/) -> its Markdown, for every public module.

    A package's page documents what its ``__init__`` defines; what it re-exports is
    documented once, on the page of the module that defines it.
    """
    pages = {}
    for module in public_modules():
        parts = module.split(".")
        if is_package(module):
            page = "/".join(parts) + "/index.md"
            members = defined_names(module)
            option = f"members: [{', '.join(members)}]" if members else "members: false"
            body = f"::: {module}\n    options:\n      {option}\n" + contents(module)
        else:
            page = "/".join(parts) + ".md"
            body = f"::: {module}\n"
        pages[page] = body
    return pages


def summary(pages: dict[str, str]) -> str:
    """The literate-nav SUMMARY.md: ``ppl_ssvae`` and its modules and subpackages at the
    top (nested under one ``ppl_ssvae`` entry, Material shows the section empty), each
    subpackage's modules under it."""
    lines = []
    for page in pages:
        parts = page.removesuffix(".md").removesuffix("/index").split("/")
        depth = max(len(parts) - 2, 0)
        title = ".".join(parts) if depth == 0 else parts[-1]
        lines.append("    " * depth + f"* [{title}]({page})")
    return "\n".join(lines) + "\n"


# Links in results/README.md point at the run folders beside it; a folder becomes a page
# listing its files, so every link lands somewhere in the site.
LINK = re.compile(r"\]\(([^)#:]+?)(#[^)]*)?\)")


def results_pages() -> dict[str, str | bytes]:
    """Path (under results/) -> content: the results README as the page, its run folders
    as pages listing their files, and the files themselves."""
    files: dict[str, str | bytes] = {}
    for path in sorted(RESULTS.rglob("*")):
        rel = path.relative_to(RESULTS).as_posix()
        if path.is_dir():
            listing = [f"# results/{rel}\n"]
            for child in sorted(path.iterdir()):
                target = f"{child.name}/index.md" if child.is_dir() else child.name
                target = "README.md" if child.name == "README.md" else target
                listing.append(f"- [{child.name}]({target})")
            if not (path / "README.md").exists():
                files[f"{rel}/index.md"] = "\n".join(listing) + "\n"
        elif path.suffix == ".md":
            files["index.md" if rel == "README.md" else rel] = folder_links(path)
        else:
            files[rel] = path.read_bytes()
    return files


def folder_links(path: Path) -> str:
    """The Markdown file with its links to folders pointed at their pages."""

    def fix(match: re.Match) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        resolved = (path.parent / target).resolve()
        if resolved.is_dir() and resolved.is_relative_to(RESULTS):
            readme = "README.md" if (resolved / "README.md").exists() else "index.md"
            target = f"{target.rstrip('/')}/{readme}"
        elif not resolved.is_relative_to(RESULTS):  # the repository outside results/
            return f"]({repository_link(resolved)}{anchor})"
        return f"]({target}{anchor})"

    return LINK.sub(fix, path.read_text())


def repository_link(path: Path) -> str:
    """A link out of results/ to a file that is also a page of the site, where it is one."""
    if path == ROOT / "README.md":
        return "../index.md"
    raise ValueError(f"results link to {path} has no page in the site")


def main() -> None:
    import mkdocs_gen_files

    pages = reference_pages()
    for page, body in pages.items():
        with mkdocs_gen_files.open(f"reference/{page}", "w") as f:
            f.write(body)
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.write(summary(pages))
    for rel, content in results_pages().items():
        with mkdocs_gen_files.open(
            f"results/{rel}", "wb" if isinstance(content, bytes) else "w"
        ) as f:
            f.write(content)


if __name__ in ("__main__", "<run_path>"):
    main()
