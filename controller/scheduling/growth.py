"""Elastic window jobs live: a `Resize` (or a share reassigned, `Preempt` then `Place`
of one job in one pass, as `thief`, `edf` and `fairshare` decide it) becomes pods added
to or withdrawn from the window's pod group.

* Growing: a placement with more tasks than the job has pods is remembered as a plan, and
  the missing pods are created as copies of the job's first pod, named as the CTJ names
  its replicas (`<ctj>-w<index>-<replica>`) and owned by the CTJ, so its reconciler counts
  them and the garbage collector removes them with it. The plan is bound once every pod
  is there (`controller.scheduling.scheduler`).
* Shrinking: every pod of the job is deleted (a preemption), the CTJ recreates its
  `replicas.min` pods, and the plan grows them back to the share the policy chose.

A move restarts the job, as in the simulator (`restarts` + 1, its service so far
carried, so the allocators charge it the restart cost on its next move as they do
there): a CTJ's recreated pods get those annotations when they are bound (`carried`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from controller.kube.objects import ATTAINED_BY_MODEL, ATTAINED_GPU_S, RESTARTS, PodRecord


def added_names(pods: Sequence[PodRecord], tasks: int) -> list[str]:
    """Names for the pods that take a job of `pods` to `tasks` pods: replicas
    `<base>-<r>` (the base of the first pod's name) not taken yet, lowest first."""
    base = pods[0].name.rsplit("-", 1)[0]
    taken = {p.name for p in pods}
    names: list[str] = []
    replica = 0
    while len(names) < tasks - len(pods):
        name = f"{base}-{replica}"
        if name not in taken:
            names.append(name)
        replica += 1
    return names


def added_pod(pod: Mapping[str, Any], name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    """An unbound copy of `pod` (its API object) named `name`, with the same labels and
    owner, carrying `annotations` (the first pod's, less those of its placement)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(annotations),
            "ownerReferences": list(meta.get("ownerReferences") or []),
        },
        "spec": {k: v for k, v in pod["spec"].items() if k != "nodeName"},
    }


def carried(restarts: int, attained_gpu_s: float, by_model: Mapping[str, float]) -> dict[str, str]:
    """The annotations a moved job's pods carry: its restarts and its service so far."""
    return {
        RESTARTS: str(restarts),
        ATTAINED_GPU_S: f"{attained_gpu_s:.3f}",
        ATTAINED_BY_MODEL: json.dumps(dict(by_model), sort_keys=True),
    }
