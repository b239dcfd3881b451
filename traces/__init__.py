"""Job and cluster traces: the canonical schema, readers for public formats and seeded
synthetic generators. Readers validate while streaming and raise `TraceError`."""

from traces.errors import TraceError
from traces.formats import FORMATS, load_jobs, load_nodes

__all__ = ["FORMATS", "TraceError", "load_jobs", "load_nodes"]
