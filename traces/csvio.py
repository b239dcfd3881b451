"""Streaming CSV reading with typed, validated fields and precise errors."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from traces.errors import MissingColumns, TraceError
from traces.outputs import staged_file

T = TypeVar("T")


class Row:
    """One CSV record with typed accessors that raise `TraceError` naming the field."""

    __slots__ = ("line", "path", "values")

    def __init__(self, path: Path, line: int, values: dict[str, str]) -> None:
        self.path = path
        self.line = line
        self.values = values

    def error(self, field: str, message: str) -> TraceError:
        return TraceError(self.path, message, self.line, field)

    def text(self, field: str, default: str | None = None) -> str:
        value = (self.values.get(field) or "").strip()
        if not value:
            if default is None:
                raise self.error(field, "missing value")
            return default
        return value

    def number(
        self,
        field: str,
        kind: Callable[[str], T],
        default: T | None = None,
        minimum: float | None = 0,
    ) -> T:
        raw = (self.values.get(field) or "").strip()
        if not raw:
            if default is None:
                raise self.error(field, "missing value")
            return default
        try:
            value = kind(_integral(raw) if kind is int else raw)
        except ValueError:
            expected = getattr(kind, "__name__", "number")
            raise self.error(field, f"{raw!r} is not a valid {expected}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(field, f"{raw!r} is not finite")
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise self.error(field, f"{raw} is below {minimum}")
        return value


def read_rows(path: str | Path, required: Sequence[str]) -> Iterator[Row]:
    """Yield rows of a CSV file after checking that the header has `required` columns.
    Blank lines are skipped; line numbers count the header as line 1."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(path, "file is empty", 1) from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise TraceError(path, f"not a CSV file ({err})", 1) from None
        missing = [c for c in required if c not in header]
        if missing:
            raise MissingColumns(path, f"header lacks column(s) {', '.join(missing)}", 1)
        try:
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue
                if len(record) != len(header):
                    raise TraceError(
                        path, f"expected {len(header)} fields, found {len(record)}", reader.line_num
                    )
                yield Row(path, reader.line_num, dict(zip(header, record, strict=True)))
        except (csv.Error, UnicodeDecodeError) as err:
            raise TraceError(path, f"unreadable CSV ({err})", reader.line_num) from None


def _integral(raw: str) -> str:
    """Accept "12.0" in an integer column (some traces write integers as floats)."""
    try:
        as_float = float(raw)
    except ValueError:
        return raw
    return str(int(as_float)) if as_float.is_integer() else raw


def write_rows(
    path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> int:
    """Write `rows` as CSV with a header; returns the row count. The text goes to a
    temporary name first and is renamed into place, so a failure leaves no partial file
    (and an existing file of that name as it was)."""
    count = 0
    with (
        staged_file(path) as staged,
        staged.open("w", newline="", encoding="utf-8") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
