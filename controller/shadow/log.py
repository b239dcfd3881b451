"""The shadow log: one JSON object per line, one line per shadow policy and evaluated
snapshot, appended by `controller run|serve --shadow-log PATH`.

Keys: `at` (Unix seconds of the live pass), `policy` (the shadow), `live_policy`,
`pending` (jobs waiting in the snapshot), `decisions` (jobs either policy decided on),
`differing` (of those, told otherwise by the shadow), `placed` (jobs the shadow would
start), `fragmentation_pct`, `waiting`, `queueing_delay_s`. `read_shadow_log` is the
documented reader (docs/whatif.md); a line cut short by a crash is skipped and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS = (
    "at",
    "policy",
    "live_policy",
    "pending",
    "decisions",
    "differing",
    "placed",
    "fragmentation_pct",
    "waiting",
    "queueing_delay_s",
)


@dataclass(frozen=True)
class ShadowLog:
    rows: list[dict[str, Any]]
    """One dict per line, with every key of `KEYS`, in file order."""
    skipped: int
    """Lines that were not a complete record (e.g. the last one of a killed process)."""


def read_shadow_log(path: str | Path) -> ShadowLog:
    rows = []
    skipped = 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(row, dict) or not all(k in row for k in KEYS):
            skipped += 1
            continue
        rows.append(row)
    return ShadowLog(rows, skipped)
