"""Imports point one way: flows -> tasks -> {contimg, catalog}."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported_top_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("contimg", {"prefect", "catalog", "tasks", "flows", "deployments", "contimg_cli"}),
        ("catalog", {"prefect", "contimg", "tasks", "flows", "deployments", "contimg_cli"}),
        ("tasks", {"flows", "deployments", "contimg_cli"}),
    ],
)
def test_layers_do_not_import_upwards(package, forbidden):
    imports = _imported_top_modules(package)
    bad = {name: sorted(files) for name, files in imports.items() if name in forbidden}
    assert not bad, f"{package}/ imports {bad}"
