"""Dependencies as declared: every third-party module the product imports comes from a declared distribution,
and constraints.txt pins every declared one within its bounds (so CI resolves the same versions each time)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["app", "api.py", "worker.py", "console", "routes", "webhooks", "workflows", "activities", "connectors", "ai", "hub",
           "rules"]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(extra: str | None = None) -> dict[str, Requirement]:
    project = _project()
    lines = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def _imported_top_level() -> set[str]:
    files = [p for entry in PRODUCT for p in ([ROOT / entry] if entry.endswith(".py") else (ROOT / entry).rglob("*.py"))]
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    own = {p.split(".")[0] for p in PRODUCT}
    return {n for n in names if n not in own and n not in sys.stdlib_module_names and n != "__future__"}


def test_every_imported_package_is_declared() -> None:
    declared = set(_declared())
    providers = packages_distributions()
    undeclared = {
        module: dists for module in _imported_top_level()
        if not (dists := {canonicalize_name(d) for d in providers.get(module, [])}) & declared
    }
    assert undeclared == {}


def test_constraints_pin_every_declared_dependency_within_its_bounds() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    for name, req in _declared("dev").items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert name in pins, f"{name} is declared but not pinned in constraints.txt (make constraints)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
