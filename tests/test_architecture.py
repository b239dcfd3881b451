"""The rooms of DESIGN.md: what each package may import, and what keeps `policies/` pure.

`policies/` must be pure (DESIGN.md): no I/O, no clock, no global random stream, no
state shared between runs. Two checks over its source enforce that:

1. **Imports are allowlisted.** A policy module imports only `POLICY_IMPORTS` (plus our
   own `policies`); anything else, `time`, `os`, `socket` or `subprocess` included, is
   refused, so a new dependency is a deliberate edit of that table with its reason.
2. **An AST check** refuses, wherever they appear: calls to `open`, `print`, `input`,
   `exec`, `eval` or `__import__`; any use of the `time`, `datetime`, `random`, `os`
   and `sys` modules, however imported (clock reads such as `time.perf_counter()` or
   `datetime.now()`, draws from `random`, `os.environ`, `os.getenv`); `np.random.*`
   other than explicitly seeded generators (`default_rng`, `Generator`, ...); a
   `global` statement; memoising decorators (`functools.cache`, `lru_cache`), which hide
   state in a module-level function, unless listed in `ALLOWED_STATE`; and module-level
   mutable state: an assignment, at module level or in a module-level class body, of a
   list, dict or set display or comprehension, or of a call building a mutable object
   (`list`, `dict`, `set`, `bytearray`, the `collections` containers, any `np.*` array
   constructor) unless it is wrapped in `tuple`, `frozenset`, `MappingProxyType` or
   `policies.cluster.read_only`. The only exceptions are named in `ALLOWED_STATE`, each
   with its reason.

The check is syntactic: it catches the ways these slip in, not every possible one.
`test_probe_modules_are_refused` writes a probe of each into a temporary `policies/`
and shows the checker refuses it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
THIRD_PARTY = {
    "policies": {"numpy", "scipy", "networkx"},
    "traces": {"numpy", "scipy", "networkx", "pyarrow", "pandas"},
    "simulator": {
        "numpy",
        "scipy",
        "networkx",
        "pyarrow",
        "pandas",
        "simpy",
        "matplotlib",
        "yaml",
        "ray",
    },
    "controller": {
        "numpy",
        "scipy",
        "networkx",
        "kubernetes",
        "prometheus_client",
        "yaml",
        "urllib3",
        "aiohttp",
        "cryptography",
        "celpy",
    },
}
OURS = {"gpufleet", "policies", "simulator", "traces", "controller"}
ALLOWED_OURS = {
    "policies": {"policies"},
    "traces": {"policies", "traces"},
    "simulator": {"policies", "traces", "simulator"},
    "controller": {"policies", "traces", "controller"},
}

POLICY_IMPORTS = {
    "__future__": "postponed annotations",
    "numpy": "cluster state and scores as arrays",
    "scipy": "LP/ILP (milp, linprog), sparse matrices, interpolation of profiles",
    "networkx": "the cluster topology graph",
    "typing": "type hints",
    "types": "MappingProxyType for constant tables; UnionType when coercing options",
    "dataclasses": "value objects and typed configs",
    "enum": "modes and kinds",
    "abc": "the Policy base class",
    "collections": "Counter, defaultdict, deque, OrderedDict, and the abc protocols",
    "functools": "cached_property on value objects; the memos in ALLOWED_STATE",
    "math": "scalar arithmetic",
    "statistics": "medians in calibrations",
    "heapq": "priority queues in allocators",
    "bisect": "sorted insertion (LAS queues)",
    "re": "parsing policy labels and GPU product names",
}
"""What `policies/` may import, each with why a policy needs it."""

ALLOWED_STATE = {
    ("registry.py", "_REGISTRY"): "the policy registry: filled as policy classes are "
    "defined (at import), then only read by hosts; tests restore it (conftest)",
    ("goodput.py", "_batch_grid"): "lru_cache memo of a pure function returning read-only "
    "arrays (~40% of each goodput optimisation)",
    ("gpu_models.py", "parse"): "lru_cache memo of a pure parse of a GPU product name",
}
"""Module-level state `policies/` may hold: (file, name) → why it is safe."""

BANNED_CALLS = {"open", "print", "input", "exec", "eval", "__import__", "breakpoint"}
BANNED_MODULES = {"time", "datetime", "random", "os", "sys", "socket", "subprocess"}
SEEDED_RANDOM = {"default_rng", "Generator", "SeedSequence", "BitGenerator", "PCG64"}
MEMOISERS = {"cache", "lru_cache"}
MUTABLE_BUILDERS = {
    "list",
    "dict",
    "set",
    "bytearray",
    "deque",
    "defaultdict",
    "OrderedDict",
    "Counter",
}
FREEZERS = {"tuple", "frozenset", "MappingProxyType", "read_only"}


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


# -- purity of policies/ ------------------------------------------------------------------


def purity_problems(path: Path) -> list[str]:
    """Everything in one policy module that breaks the rules of this file's docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _module_aliases(tree)
    found = [
        *_imports_outside_allowlist(tree),
        *_banned_uses(tree, aliases),
        *_module_state(tree, aliases, path.name),
    ]
    return [f"{path.name}:{line}: {what}" for line, what in sorted(found)]


def _imports_outside_allowlist(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            root = name.split(".")[0]
            if root != "policies" and root not in POLICY_IMPORTS:
                yield node.lineno, f"imports {name} (not in POLICY_IMPORTS)"


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → the module or module attribute it was imported as."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                aliases[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`np.random.rand` → "numpy.random.rand", the root resolved through the imports;
    None unless the chain starts at an imported name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _banned_uses(tree: ast.Module, aliases: dict[str, str]) -> Iterator[tuple[int, str]]:
    # Each dotted chain is judged once, at its outermost attribute.
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            yield node.lineno, f"global statement ({', '.join(node.names)})"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in BANNED_CALLS and node.func.id not in aliases:
                yield node.lineno, f"calls {node.func.id}()"
        elif isinstance(node, ast.Attribute | ast.Name) and id(node) not in inner:
            problem = _banned_name(_dotted(node, aliases) or "")
            if problem:
                yield node.lineno, problem


def _banned_name(dotted: str) -> str | None:
    root, _, rest = dotted.partition(".")
    if root in BANNED_MODULES:
        return f"uses {dotted} (the {root} module: clock, I/O or process state)"
    if rest.startswith("random.") and root == "numpy" and rest[7:] not in SEEDED_RANDOM:
        return f"uses {dotted} (numpy's global random stream)"
    return None


def _module_state(
    tree: ast.Module, aliases: dict[str, str], filename: str
) -> Iterator[tuple[int, str]]:
    for node in _module_level(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = (_dotted(call, aliases) or "").split(".")[-1]
                if name in MEMOISERS and (filename, node.name) not in ALLOWED_STATE:
                    yield node.lineno, f"memoises {node.name} with {name} (hidden state)"
        targets, value = _assignment(node)
        if value is None or not _builds_mutable(value, aliases):
            continue
        for target in targets:
            if (filename, target) not in ALLOWED_STATE:
                yield node.lineno, f"module-level mutable state {target}"


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements at module level and in module-level class bodies (shared by every
    instance), including those inside if/try blocks there."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.ClassDef):
            stack.extend(node.body)
        elif isinstance(node, ast.If | ast.Try):
            stack.extend([*node.body, *node.orelse])


def _assignment(node: ast.stmt) -> tuple[list[str], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        return [node.target.id], node.value
    return [], None


def _builds_mutable(value: ast.expr, aliases: dict[str, str]) -> bool:
    displays = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    if isinstance(value, displays):
        return True
    if isinstance(value, ast.BinOp):
        return _builds_mutable(value.left, aliases) or _builds_mutable(value.right, aliases)
    if isinstance(value, ast.Subscript):  # np.linspace(...)[:, None] is still an array
        return _builds_mutable(value.value, aliases)
    if not isinstance(value, ast.Call):
        return False
    dotted = _dotted(value.func, aliases) or (
        value.func.id if isinstance(value.func, ast.Name) else ""
    )
    name = dotted.split(".")[-1]
    if name in FREEZERS:
        return False
    return name in MUTABLE_BUILDERS or dotted.startswith("numpy.")


def test_policies_are_pure() -> None:
    problems = [
        p for path in sorted((ROOT / "policies").rglob("*.py")) for p in purity_problems(path)
    ]
    assert problems == []


PROBES = {
    "opens a file": ("def f() -> str:\n    return open('x').read()\n", "calls open()"),
    "reads the clock": (
        "import time\n\ndef f() -> float:\n    return time.time()\n",
        "uses time.time",
    ),
    "reads the clock, imported by name": (
        "from time import perf_counter\n\ndef f() -> float:\n    return perf_counter()\n",
        "uses time.perf_counter",
    ),
    "reads the date": (
        "from datetime import datetime\n\ndef f() -> object:\n    return datetime.now()\n",
        "uses datetime.datetime.now",
    ),
    "draws from random": (
        "import random\n\ndef f() -> float:\n    return random.random()\n",
        "uses random.random",
    ),
    "draws from numpy's global stream": (
        "import numpy as np\n\ndef f() -> float:\n    return float(np.random.rand())\n",
        "uses numpy.random.rand",
    ),
    "imports socket": ("import socket\n", "imports socket"),
    "imports subprocess": ("from subprocess import run\n", "imports subprocess"),
    "reads the environment": (
        "import os\n\ndef f() -> str | None:\n    return os.environ.get('X')\n",
        "uses os.environ.get",
    ),
    "prints": ("def f() -> None:\n    print('placed')\n", "calls print()"),
    "mutates a module global": (
        "SEEN = []\n\ndef f(job: str) -> None:\n    SEEN.append(job)\n",
        "module-level mutable state SEEN",
    ),
    "rebinds a module global": (
        "COUNT = 0\n\ndef f() -> None:\n    global COUNT\n    COUNT += 1\n",
        "global statement (COUNT)",
    ),
    "keeps a module-level cache": (
        "from collections import defaultdict\n\nCACHE: dict = defaultdict(int)\n",
        "module-level mutable state CACHE",
    ),
    "keeps a writeable module-level array": (
        "import numpy as np\n\nLEVELS = np.array([1, 2])\n",
        "module-level mutable state LEVELS",
    ),
    "shares state through a class attribute": (
        "class P:\n    seen: set[str] = set()\n",
        "module-level mutable state seen",
    ),
    "memoises a function": (
        "import functools\n\n@functools.lru_cache\ndef f(x: int) -> int:\n    return x\n",
        "memoises f with lru_cache",
    ),
}


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_probe_modules_are_refused(probe: str, tmp_path: Path) -> None:
    source, problem = PROBES[probe]
    path = tmp_path / "policies" / "probe.py"
    path.parent.mkdir()
    path.write_text(source)
    assert any(problem in found for found in purity_problems(path)), purity_problems(path)


def test_what_is_allowed_passes(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text(
        "import re\n"
        "from types import MappingProxyType\n\n"
        "import numpy as np\n\n"
        "from policies.cluster import read_only\n\n"
        "NAMES = frozenset({'a', 'b'})\n"
        "INDEX = MappingProxyType({'a': 0})\n"
        "LEVELS = read_only(np.array([1, 2]))\n"
        "WORD = re.compile('[a-z]+')\n\n"
        "def f(seed: int, time: float) -> float:\n"
        "    seen = []\n"
        "    seen.append(time)\n"
        "    return float(np.random.default_rng(seed).random()) + seen[0]\n"
    )
    assert purity_problems(path) == []


LONG_MODULE_LINES = 500


@pytest.mark.parametrize("package", sorted(OURS))
def test_long_modules_say_why_at_their_top(package: str) -> None:
    """A module over LONG_MODULE_LINES lines states why in its docstring, in a
    sentence starting "Over 500 lines because"; otherwise it should be split."""
    unexplained = []
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if f"Over {LONG_MODULE_LINES} lines because" not in docstring:
                unexplained.append(str(path.relative_to(ROOT)))
    assert unexplained == []
