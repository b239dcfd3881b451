"""Fidelity table from `gpufleet experiment hetero` output directories.

Per workload set (the folder part of the workload name) and policy, with Sia's scripts'
definitions: average JCT over all jobs of all traces, p99 JCT as the pooled sorted value
at index ⌊0.99·n⌋, makespan averaged over traces; plus Sia's reduction against every
other policy.

    python benchmarks/sia_fidelity_table.py OUT_DIR [OUT_DIR ...] [--baseline sia]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def load(dirs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    jobs = pd.concat([pd.read_csv(Path(d) / "jobs.csv") for d in dirs], ignore_index=True)
    summary = pd.concat([pd.read_csv(Path(d) / "summary.csv") for d in dirs], ignore_index=True)
    jobs["set"] = jobs["workload"].str.split("/").str[0]
    summary["set"] = summary["workload"].str.split("/").str[0]
    return jobs, summary


def table(jobs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (group, policy), part in summary.groupby(["set", "policy"], sort=False):
        done = jobs[(jobs["set"] == group) & (jobs["policy"] == policy)]
        completed = np.sort(done.loc[done["status"] == "completed", "jct_s"].to_numpy())
        rows.append(
            {
                "set": group,
                "policy": policy,
                "traces": len(part),
                "jobs": int(part["jobs"].sum()),
                "unfinished": int((done["status"] != "completed").sum()),
                "avg_jct_h": completed.mean() / 3600,
                "p99_jct_h": completed[int(0.99 * completed.size)] / 3600,
                "makespan_h": part["makespan_h"].mean(),
                "gpu_h_per_job": part["gpu_hours_per_job"].mean(),
                "restarts_per_job": part["restarts_per_job"].mean(),
            }
        )
    return pd.DataFrame(rows)


def reductions(result: pd.DataFrame, baseline: str) -> pd.DataFrame:
    rows = []
    for group, part in result.groupby("set", sort=False):
        base = part[part["policy"] == baseline]
        if base.empty:
            continue
        ref = base.iloc[0]
        for _, other in part[part["policy"] != baseline].iterrows():
            rows.append(
                {
                    "set": group,
                    "vs": other["policy"],
                    "avg_jct_lower_pct": 100 * (1 - ref["avg_jct_h"] / other["avg_jct_h"]),
                    "p99_jct_lower_pct": 100 * (1 - ref["p99_jct_h"] / other["p99_jct_h"]),
                    "makespan_lower_pct": 100 * (1 - ref["makespan_h"] / other["makespan_h"]),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--baseline", default="sia")
    args = parser.parse_args()
    jobs, summary = load(args.dirs)
    result = table(jobs, summary)
    print(markdown(result, 2))
    print()
    print(markdown(reductions(result, args.baseline), 0))


def markdown(frame: pd.DataFrame, digits: int) -> str:
    def cell(value: object) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
