"""The rooms of DESIGN.md: what each package may import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
THIRD_PARTY = {
    "policies": {"numpy", "scipy", "networkx"},
    "traces": {"numpy", "scipy", "networkx", "pyarrow", "pandas"},
    "controller": {
        "numpy",
        "scipy",
        "networkx",
        "kubernetes",
        "prometheus_client",
        "yaml",
        "urllib3",
        "aiohttp",
    },
}
OURS = {"policies", "simulator", "traces", "controller"}
ALLOWED_OURS = {
    "policies": {"policies"},
    "traces": {"policies", "traces"},
    "controller": {"policies", "traces", "controller"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED_OURS))
def test_packages_import_only_what_their_room_allows(package: str) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((ROOT / package).rglob("*.py")):
        roots = imported_roots(path) - stdlib
        ours = roots & OURS
        assert ours <= ALLOWED_OURS[package], f"{path.relative_to(ROOT)} imports {ours}"
        foreign = roots - OURS
        assert foreign <= THIRD_PARTY[package], f"{path.relative_to(ROOT)} imports {foreign}"


def test_policies_read_no_clock_and_no_global_random() -> None:
    banned = ("time.time", "time.monotonic", "datetime.now", "np.random.seed", "random.random(")
    for path in sorted((ROOT / "policies").rglob("*.py")):
        text = path.read_text()
        for word in banned:
            assert word not in text, f"{path.relative_to(ROOT)} uses {word}"
