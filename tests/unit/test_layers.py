"""The package's layers: every import points down, never up or sideways between binaries.

Each package's `__init__` docstring says what it may import; this test holds the code to it
(as kopf's import-linter contract does), reading every module's imports with `ast` (imports
inside functions included: a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "lvs_operator"

# What each layer may import of lvs_operator (a top-level module or subpackage name). A layer
# not listed here (cli, realserver, documents, show) sits on top and may import anything.
CORE = {"model", "plan", "ownership", "files", "syncer", "vrrp"}
KERNEL = {"ipvs", "network"}
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "files": set(),
    "plan": {"model"},
    "vrrp": {"model"},
    "exposition": set(),
    "ownership": {"model", "files"},
    "syncer": CORE | {"ipvs"},
    "ipvs": {"model", "plan"},
    "network": {"model"},
    "api": {"model"},
    "kube": {"api"},
    "controller": {"api", "kube", "model"},
    "agent": CORE | KERNEL | {"api", "kube", "exposition"},
    "keepalived": {"model", "vrrp", "network", "files", "exposition"},
}


def _imports(path: Path) -> set[str]:
    """Return the lvs_operator layers (top-level names) that module `path` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "lvs_operator":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from lvs_operator import x, y
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lvs_operator" and len(parts) > 1:
                    found.add(parts[1])
    found.discard("__version__")
    return found


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer(path)
    wrong = _imports(path) - ALLOWED[layer] - {layer}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


def test_every_layer_is_checked() -> None:
    layers = {_layer(p) for p in PACKAGE.rglob("*.py")}
    on_top = {"__init__", "cli", "realserver", "documents", "show"}
    assert layers - on_top <= ALLOWED.keys()


# The controller's pure modules: no API client, no framework (tested without a cluster;
# `objects` is pure too, but keys its entries with `kube.watch.Key`).
PURE_CONTROLLER = ("resolve", "report", "admission", "loadbalancer")


@pytest.mark.parametrize("name", PURE_CONTROLLER)
def test_pure_controller_modules_talk_to_no_api(name: str) -> None:
    path = PACKAGE / "controller" / f"{name}.py"
    tree = ast.parse(path.read_text(), str(path))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not imported & {"kopf", "kubernetes"}, f"controller/{name}.py imports a client"
    assert "kube" not in _imports(path), f"controller/{name}.py imports lvs_operator.kube"
