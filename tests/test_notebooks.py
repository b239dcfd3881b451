"""The analysis notebooks: each runs top to bottom on its small default, its figures
render, it imports only the public API, and it is committed without outputs."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
DATA_NOTEBOOKS = [path for path in NOTEBOOKS if "GPUFLEET_DATA_DIR" in path.read_text()]
STRIP_TOOL = ROOT / "tools" / "strip_notebooks.py"
CELL_TIMEOUT_S = 240
OUR_PACKAGES = {"policies", "traces", "simulator", "controller"}
PUBLIC_SIMULATOR_MODULES = {"simulator.run", "simulator.compare", "simulator.results"}
PUBLIC_SIMULATOR_PREFIXES = ("simulator.experiments",)
FIGURE = re.compile(r"plt\.(subplots|show)\(")
MAGIC = re.compile(r"^\s*[%!].*$", re.MULTILINE)
SECTION_SKIPPED = "section skipped"
"""What a notebook prints in place of a section whose public data is missing."""


def load_strip_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("strip_notebooks", STRIP_TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def printed_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs)


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_stories_exist() -> None:
    names = {path.stem for path in NOTEBOOKS}
    assert names >= {
        "01-policy-comparison",
        "02-fragmentation",
        "03-heterogeneity",
        "04-continual-training",
        "05-rap-sharing",
        "06-whatif",
    }


def execute(path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run a notebook on its small default; raises CellExecutionError naming a failed cell."""
    monkeypatch.setenv("GPUFLEET_NOTEBOOK_OUT", str(out_dir))
    monkeypatch.delenv("GPUFLEET_NOTEBOOK_SCALE", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Agg would swallow inline figures
    notebook = read(path)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_renders_its_figures(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = execute(path, tmp_path, monkeypatch)
    figure_cells = [c for c in code_cells(notebook) if FIGURE.search(c.source)]
    assert figure_cells, "a notebook tells its story with at least one figure"
    drawing = [c for c in figure_cells if SECTION_SKIPPED not in printed_text(c)]
    if not drawing:
        pytest.skip(f"{path.name}: every figure needs public data that is not here")
    for cell in drawing:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"no figure rendered by cell:\n{cell.source}"


@pytest.mark.parametrize("path", DATA_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_public_data(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ../shared/data a notebook falls back to synthetic data or skips sections."""
    monkeypatch.setenv("GPUFLEET_DATA_DIR", str(tmp_path / "no-data"))
    notebook = execute(path, tmp_path, monkeypatch)
    printed = "".join(printed_text(c) for c in code_cells(notebook))
    assert "not found" in printed, "the fallback announces itself"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_only_the_public_api(path: Path) -> None:
    for cell in code_cells(read(path)):
        tree = ast.parse(MAGIC.sub("", cell.source))
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.ImportFrom) and stmt.module:
                names = [stmt.module]
            elif isinstance(stmt, ast.Import):
                names = [alias.name for alias in stmt.names]
            else:
                continue
            for name in names:
                assert is_public(name), f"{path.name} imports internal module {name}"


def is_public(module: str) -> bool:
    package = module.split(".")[0]
    if package not in OUR_PACKAGES:
        return True
    if package == "controller":
        return False  # notebooks analyse result files, never a live controller
    if package != "simulator":
        return not any(part.startswith("_") for part in module.split("."))
    return module in PUBLIC_SIMULATOR_MODULES or module.startswith(PUBLIC_SIMULATOR_PREFIXES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    dirty = load_strip_tool().unstripped_cells(read(path))
    assert not dirty, f"{path.name}: run `python tools/strip_notebooks.py` (cells {dirty})"


def test_strip_tool_removes_outputs_and_keeps_sources(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.metadata["execution"] = {"shell.execute_reply": "2026-01-01T00:00:00Z"}
    notebook.cells = [nbformat.v4.new_markdown_cell("# title"), cell]
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    tool = load_strip_tool()
    assert tool.main(["--check", str(path)]) == 1
    assert tool.main([str(path)]) == 0
    stripped = read(path)
    assert tool.unstripped_cells(stripped) == []
    assert [c.source for c in stripped.cells] == ["# title", "print(1)"]
    assert tool.main(["--check", str(path)]) == 0
