"""The house rules that a reader of the code relies on (docs/architecture.md):
- layers run one way: import-linter's contract in .importlinter, function-level imports included;
- no import circle between any two modules (the deprecated `MultimodalPredictor.tune` shim is the one named
  exception, also named in the contract);
- no module imports the package root `polymodal` (the root re-exports the facade, so that would be a circle);
- no module of `polymodal/` over 500 lines.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "polymodal"
EXCEPTIONS = {("polymodal.predictor", "polymodal.studies.tune")}  # the deprecated tune shim, for one release
MAX_LINES = 500


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = os.environ | {"PYTHONPATH": str(package_parent)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every polymodal module that `name` imports anywhere in its file (function bodies too), resolved to the
    longest known module name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up) + (f".{node.module}" if node.module else "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("polymodal") and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative-free: the graph is small)."""
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_the_layer_contract_holds():
    r = lint_imports(ROOT, ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_the_layer_contract_catches_a_function_level_import_upwards(tmp_path):
    """A copy of the package with one lazy import from the data layer up to the facade breaks the contract."""
    shutil.copytree(PACKAGE, tmp_path / "polymodal", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    (tmp_path / "polymodal" / "data" / "probe.py").write_text(
        "def f():\n    from polymodal.predictor import MultimodalPredictor\n\n    return MultimodalPredictor\n"
    )
    r = lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0
    assert "polymodal.data.probe -> polymodal.predictor" in r.stdout


def test_no_import_circles_between_modules():
    g = graph()
    for a, b in EXCEPTIONS:
        assert b in g[a], f"the named exception {a} -> {b} is gone: remove it from EXCEPTIONS and .importlinter"
        g[a].discard(b)
    assert cycles(g) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_the_package_root():
    offenders = sorted(m for m, deps in graph().items() if "polymodal" in deps and m != "polymodal")
    assert offenders == [], f"import from the defining module (e.g. polymodal.version), not the root: {offenders}"


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"split these by concern: {long}"
