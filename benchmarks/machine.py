"""What every benchmark result records about its run: machine, cores, date, commit and
the 1-minute load average (benchmarks/RESULTS.md asks for them beside each number)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def run_facts(repo: Path) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    return {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "load_1min": round(os.getloadavg()[0], 2),
    }


def print_result(facts: dict[str, Any], args: argparse.Namespace, result: dict[str, Any]) -> None:
    """One JSON line: the run's facts, its arguments, its result and the load after."""
    after = round(os.getloadavg()[0], 2)
    print(json.dumps({**facts, **vars(args), **result, "load_1min_after": after}))
