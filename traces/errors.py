"""One error type for every bad trace, naming file, line and field."""

from __future__ import annotations

from pathlib import Path


class TraceError(ValueError):
    """A malformed trace or cluster file. `str()` is one line: `file:line: field: why`."""

    def __init__(
        self, path: str | Path, message: str, line: int | None = None, field: str = ""
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{message}")


class MissingColumns(TraceError):
    """A CSV header without a column its reader needs (line 1)."""
