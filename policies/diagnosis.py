"""Why no node fits a job, in kube-scheduler's words: "0/8 nodes are available: 8
untolerated taint kwok.x-k8s.io/node=fake:NoSchedule." Each node is charged to the first
filter it fails, in the order kube-scheduler's plugins run (taints, selector, then
resources), so the counts add up to the cluster's size and name the fix a user needs.
Asked about the cluster as a pass found it, a node that fits counts as "room taken
this pass" (by jobs placed ahead in the queue, or too little for a whole gang).
"""

from __future__ import annotations

from collections import Counter

from policies.cluster import ClusterState, Taint
from policies.jobs import JobSpec
from policies.placement import model_mask, selector_mask, taint_mask


def why_no_node_fits(spec: JobSpec, state: ClusterState) -> str:
    """A one-line reason naming how many nodes each filter turned away."""
    task = spec.task
    reasons: Counter[str] = Counter()
    taints_ok = taint_mask(spec, state)
    selector_ok = selector_mask(spec, state)
    models_ok = model_mask(spec.allowed_models, state) if spec.allowed_models else None
    gpus_fit = (state.gpu_free >= task.gpu_milli).sum(axis=1) >= task.num_gpus
    for index, node in enumerate(state.nodes):
        if not taints_ok[index]:
            reasons[f"untolerated taint {_first_untolerated(spec, node.taints)}"] += 1
        elif not selector_ok[index]:
            reasons["node selector does not match"] += 1
        elif task.num_gpus and models_ok is not None and not models_ok[index]:
            reasons["GPU model not allowed"] += 1
        elif task.num_gpus and not gpus_fit[index]:
            reasons["insufficient GPUs"] += 1
        elif state.cpu_free[index] < task.cpu_milli:
            reasons["insufficient CPU"] += 1
        elif state.mem_free[index] < task.mem_mib:
            reasons["insufficient memory"] += 1
        else:
            reasons["room taken this pass"] += 1
    listed = ", ".join(f"{count} {why}" for why, count in reasons.most_common())
    return f"0/{state.num_nodes} nodes are available: {listed}"


def _first_untolerated(spec: JobSpec, taints: tuple[Taint, ...]) -> str:
    for taint in taints:
        if taint.effect not in ("NoSchedule", "NoExecute"):
            continue
        if not any(t.tolerates(taint) for t in spec.tolerations):
            value = f"={taint.value}" if taint.value else ""
            return f"{taint.key}{value}:{taint.effect}"
    return "(unknown)"
