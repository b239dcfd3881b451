"""The scheduler's picture of the cluster: nodes and non-terminal pods from the
informers, the capacity ledger built from them, and the assume cache.

Every bound pod is counted, whoever bound it: pods of ours by the GPU indices in our
annotations, others by their requests (kube-scheduler's pods and static pods would
otherwise be invisible and their GPUs double-booked). A pod this scheduler has just
bound is *assumed*: charged at once, so the next pass does not hand its GPUs out again,
and confirmed when the watch echoes it with `spec.nodeName` set. An assumption the
watch never confirms expires after a timeout.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from controller.dra.inventory import KINDS as DRA_KINDS
from controller.dra.inventory import ClaimAllocation, DraState
from controller.kube.objects import (
    ASSIGNED_GPUS,
    SCHEDULER_NAME,
    NodeRecord,
    PodRecord,
    node_from_json,
    pod_from_json,
)
from controller.scheduling.encoders import GpuEncoder
from controller.scheduling.ledger import Admission, CapacityLedger, Charge
from controller.scheduling.workload import PendingJobs, RunningJobs, node_spec, task_request
from policies import TaskRequest
from policies.reservations import reserve_gpu

log = logging.getLogger(__name__)

NODES = "nodes"
PODS = "pods"


@dataclass(frozen=True, slots=True)
class Assumption:
    charge: Charge
    deadline: float = math.inf
    """Set when the bind call returns; until then the assumption cannot expire (a long
    bind queue must not free GPUs whose bind is still on its way)."""


class ClusterCache:
    """Implements the informers' `ResourceHandler`. `on_change` is called whenever
    something a scheduling pass reads has changed."""

    def __init__(
        self,
        encoder: GpuEncoder,
        scheduler_name: str = SCHEDULER_NAME,
        dra: DraState | None = None,
    ) -> None:
        self.encoder = encoder
        self.dra = dra or DraState()
        """ResourceSlices, DeviceClasses and ResourceClaims. A DRA pod's GPUs are
        charged to its claims (`claim/<uid>/<i>`), the pod itself only its CPU and
        memory, so a claim shared by several pods is counted once."""
        self._claim_keys: dict[str, set[str]] = {}
        self._claims_planned: dict[str, list[ClaimAllocation]] = {}
        self._dra_pods: set[str] = set()
        """Charged pods with claims: views show them holding their claims' GPUs."""
        self.scheduler_name = scheduler_name
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        self.seq: dict[str, int] = {}
        self.ledger = CapacityLedger()
        self.admission = Admission()
        self.assumed: dict[str, Assumption] = {}
        self.on_change: Callable[[], None] = lambda: None
        self._counter = itertools.count()
        self._wanted: dict[str, PodRecord] = {}
        self.flagged: dict[str, PodRecord] = {}
        """Bound pods with a field we read but cannot (charged by their requests)."""
        self.running = RunningJobs(encoder, self.dra)
        """Pods this scheduler should place, kept incrementally: a pass must not scan
        every pod in the cluster."""
        self.pending = PendingJobs(encoder)
        """The jobs of the pods waiting for this scheduler, decoded again only when
        their pods change."""

    # -- informer handler -------------------------------------------------------------

    def replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        if kind in DRA_KINDS:
            self._dra_changed(self.dra.replace(kind, objects), None)
            return
        if kind == NODES:
            self.nodes = {n.name: n for n in map(node_from_json, objects)}
            self._nodes_changed()
            return
        fresh = {p.uid: p for p in map(pod_from_json, objects) if not p.terminal}
        for uid in [u for u in self.pods if u not in fresh]:
            self._remove_pod(uid)
        # A relist returns pods in name order; pods we know keep their arrival order.
        for pod in fresh.values():
            self._upsert_pod(pod)

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        if kind in DRA_KINDS:
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            self._dra_changed(self.dra.apply(kind, event, obj), uid)
            return
        if kind == NODES:
            node = node_from_json(obj)
            if event == "DELETED":
                self.nodes.pop(node.name, None)
            elif self.nodes.get(node.name) == node:
                return
            else:
                self.nodes[node.name] = node
            self._nodes_changed()
            return
        pod = pod_from_json(obj)
        if event == "DELETED" or pod.terminal:
            self._remove_pod(pod.uid)
        else:
            self._upsert_pod(pod)

    # -- assume cache -----------------------------------------------------------------

    def assume(self, pod: PodRecord, charge: Charge) -> None:
        self.assumed[pod.uid] = Assumption(charge)
        self.ledger.charge(pod.uid, charge)
        self.admission.hold(pod.uid, charge.node, pod.resources)
        self._sync_running(pod.uid)

    def assume_claims(self, pod: PodRecord, charge: Charge, planned: list[ClaimAllocation]) -> None:
        """Assume a DRA pod: its claims hold the GPUs (in flight until their allocation
        is written and echoed), the pod its CPU and memory."""
        self._claims_planned[pod.uid] = planned
        for allocation in planned:
            if allocation.results is not None:
                self.dra.pending[allocation.claim.uid] = allocation
                self._charge_claim(allocation.claim.uid)
        self._dra_pods.add(pod.uid)
        self.assume(pod, Charge(charge.node, (), 0, charge.cpu_milli, charge.mem_mib))

    def planned_claims(self, uid: str) -> list[ClaimAllocation]:
        return self._claims_planned.get(uid, [])

    def finish_binding(self, uid: str, deadline: float) -> None:
        """The bind call has returned: expire the assumption at `deadline` unless the
        watch confirms it first."""
        held = self.assumed.get(uid)
        if held is not None:
            self.assumed[uid] = Assumption(held.charge, deadline)

    def forget(self, uid: str) -> None:
        """Drop an assumption (bind failed or expired); the pod's GPUs are free again
        unless the cache has meanwhile seen the pod bound."""
        if self.assumed.pop(uid, None) is None:
            return
        self._drop_planned(uid)
        pod = self.pods.get(uid)
        if pod is not None and pod.node_name:
            self._charge_bound(pod)
        else:
            self.ledger.release(uid)
            self.admission.drop(uid)
        self._sync_running(uid)
        self.on_change()

    def expired(self, now: float) -> list[str]:
        return [uid for uid, a in self.assumed.items() if a.deadline <= now]

    # -- reservations -----------------------------------------------------------------

    def reserve(self, key: str, milli: int, model_order: Sequence[int]) -> int:
        """Hold `milli` milli-GPU on one GPU under `key` (not a pod: a stream's serving
        share, `policies.reservations`) in place of its earlier hold, charged in the
        ledger so no policy places over it. Returns what is held: less than asked when no
        GPU has room for all of it, 0 when none has any. A hold of that size stays where
        it is."""
        kept = self.ledger.charge_of(key)
        if kept is not None and kept.gpu_milli == milli and self.ledger.counted(key):
            return milli
        self.ledger.release(key)
        state = self.ledger.state
        held = reserve_gpu(state, model_order, milli) if state is not None else None
        if held is not None and state is not None:
            node, gpu, granted = held
            self.ledger.charge(key, Charge(state.nodes[node].name, (gpu,), granted, 0, 0))
        self.on_change()
        return 0 if held is None else held[2]

    def unreserve(self, key: str) -> None:
        self.ledger.release(key)
        self.on_change()

    # -- queries ----------------------------------------------------------------------

    def pending_pods(self) -> list[PodRecord]:
        return [p for p in self._wanted.values() if p.uid not in self.assumed]

    def charges(self) -> dict[str, Charge]:
        charges = self.ledger.charges()
        for uid in self._dra_pods:
            view = self.charge_view(uid)
            if view is not None:
                charges[uid] = view
        return charges

    def charge_view(self, uid: str) -> Charge | None:
        """What the pod holds as policies see it: a pod with claims holds its claims'
        GPUs (charged to the claims in the ledger), others their own charge."""
        charge = self.ledger.charge_of(uid)
        pod = self.pods.get(uid)
        if charge is None or pod is None or uid not in self._dra_pods:
            return charge
        claims = self.dra.pod_claims(pod)
        if isinstance(claims, str):
            return charge
        held = sorted(
            (c.gpus[0], c.gpu_milli)
            for claim in claims
            for c in self.dra.claim_charges(claim.uid).values()
            if c.node == charge.node
        )
        if not held:
            return charge
        return replace(charge, gpus=tuple(g for g, _ in held), gpu_milli=held[0][1])

    # -- internals --------------------------------------------------------------------

    def _upsert_pod(self, pod: PodRecord) -> None:
        old = self.pods.get(pod.uid)
        self.pods[pod.uid] = pod
        if pod.uid not in self.seq:
            self.seq[pod.uid] = next(self._counter)
        if pod.node_name:
            if self.assumed.pop(pod.uid, None) is not None:
                log.debug("bind of %s confirmed by the watch", pod.key)
            self._charge_bound(pod)
        elif pod.uid not in self.assumed:
            self.ledger.release(pod.uid)
            self.admission.drop(pod.uid)
        if pod.wants(self.scheduler_name):
            self._wanted[pod.uid] = pod
        else:
            self._wanted.pop(pod.uid, None)
        if pod.node_name and pod.problems_for(self.scheduler_name):
            self.flagged[pod.uid] = pod
        else:
            self.flagged.pop(pod.uid, None)
        self._sync_running(pod.uid)
        if _matters(old, pod):
            self.on_change()

    def _remove_pod(self, uid: str) -> None:
        self._drop_planned(uid)
        self._dra_pods.discard(uid)
        pod = self.pods.pop(uid, None)
        self.seq.pop(uid, None)
        self.assumed.pop(uid, None)
        self._wanted.pop(uid, None)
        self.flagged.pop(uid, None)
        self.running.drop(uid)
        self.ledger.release(uid)
        self.admission.drop(uid)
        if pod is not None:
            self.on_change()

    def _charge_bound(self, pod: PodRecord) -> None:
        self.running.touch(pod.uid)
        self.admission.hold(pod.uid, pod.node_name, pod.resources)
        if pod.claims:
            # Its GPUs are its claims' (charged to them); the pod holds CPU and memory.
            self._dra_pods.add(pod.uid)
            self.ledger.charge(pod.uid, Charge(pod.node_name, (), 0, pod.cpu_milli, pod.mem_mib))
            return
        charge = self._recorded_charge(pod)
        if charge is not None:
            self.ledger.charge(pod.uid, charge)
            return
        try:
            task = task_request(pod, self.encoder)
        except ValueError as err:
            log.warning("bound pod %s: unreadable GPU request (%s); CPU/memory only", pod.key, err)
            task = TaskRequest(pod.cpu_milli, pod.mem_mib)
        previous = self.ledger.charge_of(pod.uid)
        if previous is None or previous.node != pod.node_name:
            self.ledger.charge_unindexed(pod.uid, pod.node_name, task)

    def _sync_running(self, uid: str) -> None:
        """Keep `running` to our pods that hold resources (bound or assumed)."""
        pod = self.pods.get(uid)
        ours = pod is not None and pod.scheduler_name == self.scheduler_name
        if ours and pod is not None and (pod.node_name or uid in self.assumed):
            self.running.put(pod)
        else:
            self.running.drop(uid)

    def _recorded_charge(self, pod: PodRecord) -> Charge | None:
        """The charge our own Binding annotations record, if the pod has readable ones."""
        gpus = pod.meta.assigned_gpus
        if gpus is None:
            return None
        return Charge(pod.node_name, gpus, pod.meta.assigned_milli, pod.cpu_milli, pod.mem_mib)

    # -- DRA --------------------------------------------------------------------------

    def _dra_changed(self, what: str, claim_uid: str | None) -> None:
        if what == "nodes":
            self._nodes_changed()
            self._charge_claims(list(self.dra.claims))
        elif claim_uid is None:
            self._charge_claims([*self._claim_keys, *self.dra.claims])
        else:
            self._charge_claims([claim_uid])
        self.on_change()

    def refresh_dra_labels(self) -> None:
        """After new DRA request shapes were seen: label the nodes that fit them."""
        self.dra.labels_changed = False
        self._nodes_changed()

    def _charge_claims(self, uids: list[str]) -> None:
        for uid in dict.fromkeys(uids):
            self._charge_claim(uid)

    def _charge_claim(self, uid: str) -> None:
        claim = self.dra.claims.get(uid)
        if claim is not None and claim.allocated is not None:
            self.dra.pending.pop(uid, None)  # the allocation is written and seen
        charges = self.dra.claim_charges(uid)
        for key in self._claim_keys.pop(uid, set()) - charges.keys():
            self.ledger.release(key)
        for key, charge in charges.items():
            self.ledger.charge(key, charge)
        if charges:
            self._claim_keys[uid] = set(charges)

    def _drop_planned(self, pod_uid: str) -> None:
        """Release in-flight allocations of a pod's claims whose writes did not land."""
        for allocation in self._claims_planned.pop(pod_uid, []):
            if self.dra.pending.pop(allocation.claim.uid, None) is not None:
                self._charge_claim(allocation.claim.uid)

    def settle_claims(self, pod_uid: str) -> None:
        """The pod's claim writes are done (or abandoned): stop tracking them."""
        self._claims_planned.pop(pod_uid, None)

    def _nodes_changed(self) -> None:
        before = set(self.ledger.state.node_index) if self.ledger.state is not None else set()
        specs = [self.dra.adapt(node_spec(n, self.encoder)) for n in self.nodes.values()]
        if not self.ledger.set_nodes(specs):
            return
        for uid, assumption in list(self.assumed.items()):
            if not self.ledger.has_node(assumption.charge.node):
                node = assumption.charge.node
                log.warning("node %s is gone: dropping the assumption for pod %s", node, uid)
                del self.assumed[uid]
                self.ledger.release(uid)
                self.admission.drop(uid)
                self._sync_running(uid)
        # Pods charged before their node was known had no GPUs to pick from: recharge.
        for pod in self.pods.values():
            new_node = pod.node_name and pod.node_name not in before
            if new_node and self.ledger.has_node(pod.node_name):
                self.ledger.release(pod.uid)
                self._charge_bound(pod)
        self.on_change()


def _matters(old: PodRecord | None, new: PodRecord) -> bool:
    """Whether a pod update can change a pass: any change while unbound; once bound,
    only a move or a different charge (a phase change to Running is not news)."""
    if old is None or not new.node_name or old.node_name != new.node_name:
        return old != new
    return (
        old.annotations.get(ASSIGNED_GPUS) != new.annotations.get(ASSIGNED_GPUS)
        or (old.cpu_milli, old.mem_mib, old.resources)
        != (new.cpu_milli, new.mem_mib, new.resources)
        or old.scheduler_name != new.scheduler_name
    )
