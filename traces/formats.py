"""Trace formats by name, so hosts ask for `load_jobs(path, "openb")` and never branch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from policies import JobSpec, NodeSpec
from traces import canonical, gavel, openb, philly, rap, sia
from traces.errors import TraceError

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


def load_jobs(path: str | Path, fmt: str = "canonical", **options: object) -> list[JobSpec]:
    try:
        reader = FORMATS[fmt]
    except KeyError:
        raise TraceError(
            path, f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}"
        ) from None
    jobs = list(reader(path, **options))
    if not jobs:
        raise TraceError(path, "trace has no jobs")
    return jobs


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
