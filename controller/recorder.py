"""`gpufleet controller record`: watch a cluster and write what happened to gpufleet's
pods as a trace the simulator can replay.

Output directory:

* `nodes.csv`: the nodes seen, in the canonical cluster schema;
* `jobs.csv`: one job per pod or gang (canonical job schema); `submit_s` is seconds after
  the first arrival, `duration_s` the pod's stated runtime (`gpufleet.io/sim-runtime`)
  or else the time it was observed running;
* `placements.csv`: where each pod ran (`job_id,pod,node,gpus,gpu_milli,start_s,end_s`).

Jobs still pending or running when recording stops are written with what is known
(an unfinished job's duration is its time so far, at least one second).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controller.cache import NODES
from controller.encoders import GpuEncoder
from controller.objects import (
    SCHEDULER_NAME,
    NodeRecord,
    PodRecord,
    node_from_json,
    pod_from_json,
)
from controller.workload import build_workload, job_id, node_spec
from policies import FixedDuration, JobSpec
from traces.canonical import write_jobs, write_nodes
from traces.outputs import output_directory

PLACEMENT_COLUMNS = ("job_id", "pod", "node", "gpus", "gpu_milli", "start_s", "end_s")


@dataclass
class PodLife:
    pod: PodRecord
    arrived: float
    started: float | None = None
    ended: float | None = None
    node: str = ""
    gpus: str = ""
    gpu_milli: int = 0


class TraceRecorder:
    """A `ResourceHandler` that remembers each of our pods' arrival, placement and end."""

    def __init__(
        self,
        encoder: GpuEncoder,
        scheduler_name: str = SCHEDULER_NAME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.encoder = encoder
        self.scheduler_name = scheduler_name
        self.clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.lives: dict[str, PodLife] = {}

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        if kind == NODES:
            self.nodes.update((n.name, n) for n in map(node_from_json, objects))
            return
        present = {obj["metadata"]["uid"] for obj in objects}
        for uid, life in self.lives.items():
            if uid not in present and life.ended is None:
                life.ended = self.clock()
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        if kind == NODES:
            node = node_from_json(obj)
            self.nodes[node.name] = node
            return
        pod = pod_from_json(obj)
        if pod.scheduler_name != self.scheduler_name:
            return
        now = self.clock()
        life = self.lives.setdefault(pod.uid, PodLife(pod, arrived=pod.created or now))
        life.pod = pod
        if pod.node_name and life.started is None:
            life.started = now
            life.node = pod.node_name
            life.gpus = ",".join(map(str, pod.meta.assigned_gpus or ()))
            life.gpu_milli = pod.meta.assigned_milli
        if (event == "DELETED" or pod.terminal) and life.ended is None:
            life.ended = now

    # -- output -----------------------------------------------------------------------

    def write(self, out_dir: Path, force: bool = False) -> int:
        """Write the three files, staged, by the rules of `traces.outputs` (`force`: also
        beside files gpufleet did not write); returns the number of jobs."""
        jobs = self.jobs()
        with output_directory(out_dir, "controller record", force) as stage:
            write_nodes(
                [node_spec(n, self.encoder) for n in sorted(self.nodes.values(), key=_name)],
                stage / "nodes.csv",
            )
            write_jobs(jobs, stage / "jobs.csv")
            (stage / "placements.csv").write_text(self._placements_csv())
        return len(jobs)

    def jobs(self) -> list[JobSpec]:
        if not self.lives:
            return []
        origin = min(life.arrived for life in self.lives.values())
        by_job: dict[str, list[PodLife]] = {}
        for life in self.lives.values():
            by_job.setdefault(job_id(life.pod), []).append(life)
        seq = {uid: i for i, uid in enumerate(self.lives)}
        jobs = []
        for lives in by_job.values():
            workload = build_workload(
                [replace(life.pod, node_name="") for life in lives], seq, self.encoder
            )
            if not workload.pending:
                continue
            spec = workload.pending[0].spec
            arrived = min(life.arrived for life in lives)
            jobs.append(
                replace(
                    spec,
                    id=spec.id.split("/", 1)[-1],
                    submit_time=round(arrived - origin, 3),
                    work=FixedDuration(self._duration(lives)),
                )
            )
        jobs.sort(key=lambda j: (j.submit_time, j.id))
        return jobs

    def _duration(self, lives: list[PodLife]) -> float:
        stated = lives[0].pod.meta.runtime_s
        if stated is not None:
            return stated
        now = self.clock()
        spans = [(life.ended or now) - life.started for life in lives if life.started is not None]
        return max(1.0, round(max(spans, default=1.0), 3))

    def _placements_csv(self) -> str:
        lives = [life for life in self.lives.values() if life.started is not None]
        if not lives:
            return ",".join(PLACEMENT_COLUMNS) + "\n"
        origin = min(life.arrived for life in self.lives.values())
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PLACEMENT_COLUMNS)
        for life in sorted(lives, key=lambda x: (x.started or 0.0, x.pod.name)):
            assert life.started is not None
            end = "" if life.ended is None else round(life.ended - origin, 3)
            row = (
                job_id(life.pod).split("/", 1)[-1],
                life.pod.name,
                life.node,
                life.gpus,
                life.gpu_milli,
                round(life.started - origin, 3),
                end,
            )
            writer.writerow(row)
        return buffer.getvalue()


def _name(node: NodeRecord) -> str:
    return node.name
