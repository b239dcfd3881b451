"""Trace formats by name, so hosts ask for `load_jobs(path, "openb")` and never branch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from policies import JobSpec, NodeSpec
from traces import canonical, gavel, openb, philly, rap, sia
from traces.errors import MissingColumns, TraceError

JobReader = Callable[..., Iterable[JobSpec]]

FORMATS: dict[str, JobReader] = {
    "canonical": canonical.read_jobs,
    "openb": openb.read_jobs,
    "philly": philly.read_jobs,
    "gavel": gavel.read_jobs,
    "dlrm": rap.read_jobs,
    "sia": sia.read_jobs,
}
"""Job readers by format name; other packages may add theirs (e.g. `sia`)."""


HEADERS: dict[str, tuple[str, ...]] = {
    "canonical": canonical.REQUIRED_JOB_COLUMNS,
    "openb": openb.POD_COLUMNS,
    "philly": philly.COLUMNS,
    "gavel": gavel.COLUMNS,
    "sia": sia.WORKLOAD_COLUMNS,
}
"""The columns each single-file format's reader requires, to name the format of a file
read as another."""


def load_jobs(path: str | Path, fmt: str = "canonical", **options: object) -> list[JobSpec]:
    try:
        reader = FORMATS[fmt]
    except KeyError:
        raise TraceError(
            path, f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}"
        ) from None
    try:
        jobs = list(reader(path, **options))
    except MissingColumns as err:
        guess = _header_format(path)
        if guess is None or guess == fmt:
            raise
        hint = f"{err.message}; the header is the {guess} format's: give --format {guess}"
        raise TraceError(err.path, hint, err.line, err.field) from None
    if not jobs:
        raise TraceError(path, "trace has no jobs")
    return jobs


def _header_format(path: str | Path) -> str | None:
    """The format whose required columns the file's first line holds (the one requiring
    the most, when several do), or None."""
    try:
        with Path(path).open(encoding="utf-8") as handle:
            header = {cell.strip() for cell in handle.readline().split(",")}
    except (OSError, UnicodeDecodeError):
        return None
    fitting = [name for name, columns in HEADERS.items() if header.issuperset(columns)]
    return max(fitting, key=lambda name: len(HEADERS[name]), default=None)


def load_nodes(path: str | Path) -> list[NodeSpec]:
    """A cluster file: the canonical node schema, or an openb node list (by header)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "no such file")
    with path.open(encoding="utf-8") as handle:
        header = handle.readline()
    if header.startswith("sn,"):
        return openb.read_nodes(path, gpu_only=False)
    return canonical.read_nodes(path)
