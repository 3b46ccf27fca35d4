"""The layout's rules, read from the code's own imports (module level and inside functions, by an AST walk):
the core never reaches Ray, MLflow or an integration package; each integration layer imports only what lies
below it; no import cycle; no module over 400 lines; package `__init__` files only re-export. And the test
suite's own rule for the checkout: a test run that leaves files in it fails."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "supuq"

# Layers from the bottom up; a module may import its own layer and any layer below it, never one above.
LAYERS = ["base", "core", "tracking", "sweep", "workflows", "report", "cli"]
BASE = {"supuq", "supuq.config", "supuq.errors"}
INTEGRATIONS = {"tracking", "sweep", "workflows", "report", "cli"}
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> str:
    if name in BASE:
        return "base"
    top = name.split(".")[1]
    return top if top in INTEGRATIONS else "core"


def imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the file, relative ones resolved.
    `from pkg import sub` counts as an import of `pkg.sub` when `sub` is a module of the package."""
    known = modules()
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return found


def supuq_edges() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(name, path) if target in known} for name, path in known.items()}


def test_the_walk_sees_function_level_and_relative_imports():
    found = dict(imports("supuq.sweep.driver", PACKAGE / "sweep" / "driver.py"))
    assert "ray" in found  # `from ray import tune`, inside run_sweep only
    assert "supuq.tracking" in found and "supuq.sweep.space" in found  # `from .. import tracking`, `from .space`


def test_core_never_imports_ray_mlflow_or_an_integration_package():
    offences = []
    for name, path in modules().items():
        if layer(name) != "core":
            continue
        for target, line in imports(name, path):
            top = target.split(".")[0]
            if top in FORBIDDEN_IN_CORE or (target.startswith("supuq.") and layer(target) != "core"
                                            and target not in BASE):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not offences, "\n".join(offences)


def test_each_layer_imports_only_layers_below_it():
    offences = []
    for name, targets in supuq_edges().items():
        for target in targets:
            if LAYERS.index(layer(target)) > LAYERS.index(layer(name)):
                offences.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
    assert not offences, "\n".join(offences)


def find_cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as the cycle it closes ("a -> b -> a")."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(supuq_edges())
    assert not cycles, "\n".join(cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_package_inits_only_re_export():
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            names = isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                          for t in node.targets)
            assert isinstance(node, (ast.Import, ast.ImportFrom)) or docstring or names, (
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: only imports, __all__ and a docstring belong here")


# ------------------------------------------------------------------ the test suite leaves the checkout clean


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("writes, fails", [(None, False), ("runs/retrain/x.txt", True), ("notes.txt", True)])
def test_a_test_run_that_leaves_files_in_the_checkout_fails(tmp_path, writes, fails):
    """tests/conftest.py compares `git status` (ignored files included) before and after the session: run this
    suite's conftest in a scratch checkout whose only test writes `writes` into it (an ignored folder, a new
    file), and the run must fail naming the file, or pass when the test writes nothing there."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    (checkout / ".gitignore").write_text("/runs/\n")
    shutil.copy(ROOT / "tests" / "conftest.py", checkout / "tests" / "conftest.py")
    body = f"    path = ROOT / {writes!r}\n    path.parent.mkdir(parents=True, exist_ok=True)\n    path.write_text('x')\n" \
        if writes else "    pass\n"
    (checkout / "tests" / "test_writer.py").write_text(
        "from pathlib import Path\nROOT = Path(__file__).resolve().parent.parent\n\n\ndef test_writer():\n" + body)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=checkout,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    said = result.stdout + result.stderr
    assert "1 passed" in said, said
    if fails:
        assert result.returncode == 1, said
        assert "the tests left 1 file(s) in the checkout" in said and writes in said
    else:
        assert result.returncode == 0, said
