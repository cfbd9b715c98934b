"""MkDocs hook (mkdocs.yml `hooks:`): what the site generates at build time, offline.

- A marker line in a page is replaced by generated markdown:
  `<!-- config-reference -->`   every setting of the config tree (gen_config.py),
  `<!-- cli-reference -->`      every command and option of the CLI (gen_cli.py),
  `<!-- bench: NAME -->`        the main table of benchmarks/results/NAME.json (gen_benchmarks.py).
- Pages link to repository files the way GitHub resolves them (`../../benchmarks/results/x.png`); those files
  (benchmark results, examples) are copied into the site under `repo/`, and such links are pointed at the copy,
  so the same markdown works on GitHub and on the site.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the repository: docs/hooks/ -> docs/ -> root
if str(HERE) not in sys.path:  # mkdocs loads a hook by path, so its siblings are not importable otherwise
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:  # the generators read polymodal's own code (config tree, CLI)
    sys.path.insert(0, str(ROOT))

import gen_benchmarks  # noqa: E402
import gen_cli  # noqa: E402
import gen_config  # noqa: E402

# Repository folders whose files pages may link to; copied into the site as repo/<path>.
COPIED = ("benchmarks/results", "examples")
SITE_COPY = "repo"
MARKER = re.compile(r"^<!--\s*(config-reference|cli-reference|bench:\s*(\S+))\s*-->[ \t]*$", re.M)
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _copied_files() -> list[str]:
    out = []
    for folder in COPIED:
        for path in sorted((ROOT / folder).glob("*")):
            if path.is_file() and not path.name.startswith("."):
                out.append(path.relative_to(ROOT).as_posix())
    return out


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for rel in _copied_files():
        files.append(File.generated(config, f"{SITE_COPY}/{rel}", abs_src_path=str(ROOT / rel)))
    return files


def expand_markers(markdown: str, page_src: str) -> str:
    """Replace every marker line with its generated markdown."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1) == "config-reference":
            return gen_config.render()
        if m.group(1) == "cli-reference":
            return gen_cli.render()
        return gen_benchmarks.render(m.group(2), ROOT / "benchmarks" / "results", page_src)

    return MARKER.sub(repl, markdown)


def repo_links(markdown: str, page_src: str) -> str:
    """Point links that leave docs/ for a copied repository file at its copy in the site."""
    page_dir = posixpath.dirname(page_src)
    copied = set(_copied_files())

    def repl(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join("docs", page_dir, path))
        if in_repo.startswith("docs/") or in_repo not in copied:
            return m.group(0)  # a page of the site, or a missing file: mkdocs --strict reports the latter
        new = posixpath.relpath(f"{SITE_COPY}/{in_repo}", page_dir or ".")
        return f"{m.group(1)}{new}{'#' + anchor if anchor else ''}{m.group(3)}"

    return LINK.sub(repl, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    src = page.file.src_uri
    return repo_links(expand_markers(markdown, src), src)
