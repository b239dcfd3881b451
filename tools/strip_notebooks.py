"""Strip outputs from notebooks before they are committed; `--check` only reports.

    python tools/strip_notebooks.py                 # strip notebooks/*.ipynb in place
    python tools/strip_notebooks.py --check         # exit 1 naming any unstripped notebook
    python tools/strip_notebooks.py path.ipynb ...  # specific files

Outputs are results of one machine's run: in git they bloat diffs and go stale, and the
test suite regenerates them anyway. Stripped means no outputs, no execution counts and
no per-cell execution metadata; the notebook's own metadata (kernel) is kept.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
CELL_METADATA_DROPPED = ("execution", "collapsed", "scrolled")


def unstripped_cells(notebook: nbformat.NotebookNode) -> list[int]:
    """Indices of cells that carry outputs, an execution count or execution metadata."""
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.get("outputs")
        or cell.get("execution_count") is not None
        or any(key in cell.metadata for key in CELL_METADATA_DROPPED)
    ]


def strip(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in CELL_METADATA_DROPPED:
            cell.metadata.pop(key, None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Strip outputs from Jupyter notebooks.")
    parser.add_argument("paths", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="report, do not rewrite")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if not unstripped_cells(notebook):
            continue
        dirty.append(path)
        if not args.check:
            strip(notebook)
            nbformat.write(notebook, path)
    verb = "has outputs" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}", file=sys.stderr)
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
