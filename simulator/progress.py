"""A dependency-free progress bar on stderr, shown only on a terminal (or when forced)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """`--progress/--no-progress`, for `ProgressBar(enabled=args.progress)`."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


class ProgressBar:
    """`update(done)` redraws at most every `interval` seconds; `close()` ends the line."""

    def __init__(
        self,
        total: int,
        label: str,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        interval: float = 0.2,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = max(1, total)
        self.label = label
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        """Show `done` of the total; `note` (e.g. "3 failed") follows the counts."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and done < self.total:
            return
        self._last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(30 * frac)
        elapsed = now - self._start
        left = (
            f" ~{elapsed * (self.total - done) / done:.0f}s left" if 0 < done < self.total else ""
        )
        note = f" {note}" if note else ""
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {done}/{self.total}{note} "
            f"{elapsed:5.1f}s{left}"
        )
        self.stream.flush()

    def close(self, note: str = "") -> None:
        if self.enabled:
            self.update(self.total, note)
            self.stream.write("\n")
            self.stream.flush()
