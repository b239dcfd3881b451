"""What each pod holds on each node, kept as the same `ClusterState` arrays the simulator
uses, updated incrementally as pods come and go.

Charges are keyed by pod uid, and charging a uid again replaces its previous charge. That
one rule is what keeps the assume cache honest: a pod assumed at bind time and then echoed
back by the watch is the same uid, so it is counted once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from policies import ClusterState, NodeSpec
from policies.jobs import TaskRequest
from policies.placement import select_gpus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Charge:
    """Resources one pod holds on one node."""

    node: str
    gpus: tuple[int, ...]
    gpu_milli: int
    cpu_milli: int
    mem_mib: int


class CapacityLedger:
    """Node capacities plus per-pod charges. A charge on a node that is absent (deleted,
    or not seen yet) is remembered and applied if the node appears."""

    def __init__(self) -> None:
        self.state: ClusterState | None = None
        self._specs: tuple[NodeSpec, ...] = ()
        self._charges: dict[str, Charge] = {}
        self._applied: set[str] = set()

    # -- nodes ------------------------------------------------------------------------

    def set_nodes(self, specs: Iterable[NodeSpec]) -> bool:
        """Replace the node set (kept in name order, as the simulator keeps it); rebuilds
        the arrays only when something a policy reads changed. Returns whether it did."""
        ordered = tuple(sorted(specs, key=lambda n: n.name))
        if ordered == self._specs:
            return False
        self._specs = ordered
        self.state = ClusterState(ordered) if ordered else None
        self._applied.clear()
        for uid, charge in self._charges.items():
            self._apply(uid, charge)
        return True

    def has_node(self, name: str) -> bool:
        return self.state is not None and name in self.state.node_index

    # -- charges ----------------------------------------------------------------------

    def charge(self, uid: str, charge: Charge) -> bool:
        """Make `charge` the pod's holding (replacing any earlier one). Returns False when
        it does not fit; the pod is then left uncharged and a warning is logged."""
        if self._charges.get(uid) == charge:
            return uid in self._applied or not self.has_node(charge.node)
        self.release(uid)
        self._charges[uid] = charge
        return self._apply(uid, charge)

    def charge_unindexed(self, uid: str, node: str, task: TaskRequest) -> Charge:
        """Charge a pod whose GPU indices nobody recorded (bound by another scheduler):
        its GPUs are taken as the ones our own GPU choice would pick on that node."""
        gpus: tuple[int, ...] = ()
        if task.num_gpus and self.has_node(node):
            assert self.state is not None
            index = self.state.node_index[node]
            free, count = self.state.gpu_free[index], self.state.gpu_count[index]
            if (free >= task.gpu_milli).sum() >= task.num_gpus:
                gpus = select_gpus(task, free, count)
        charge = Charge(node, gpus, task.gpu_milli if gpus else 0, task.cpu_milli, task.mem_mib)
        self.charge(uid, charge)
        return charge

    def release(self, uid: str) -> None:
        charge = self._charges.pop(uid, None)
        if charge is None or uid not in self._applied:
            return
        self._applied.discard(uid)
        assert self.state is not None
        index = self.state.node_index[charge.node]
        self.state.release(index, charge.gpus, charge.gpu_milli, charge.cpu_milli, charge.mem_mib)

    def charge_of(self, uid: str) -> Charge | None:
        return self._charges.get(uid)

    def counted(self, uid: str) -> bool:
        """Whether the pod's charge is in the arrays now."""
        return uid in self._applied

    def charges(self) -> dict[str, Charge]:
        return dict(self._charges)

    def _apply(self, uid: str, charge: Charge) -> bool:
        if not self.has_node(charge.node):
            return False
        assert self.state is not None
        index = self.state.node_index[charge.node]
        try:
            self.state.allocate(
                index, charge.gpus, charge.gpu_milli, charge.cpu_milli, charge.mem_mib
            )
        except ValueError as err:
            log.warning("pod %s not counted: it over-commits its node (%s)", uid, err)
            return False
        self._applied.add(uid)
        return True


class Admission:
    """What the kubelet counts on each node: the extended-resource requests (GPUs as the
    device plugin sees them) of the pods bound or assumed there. The kubelet refuses a
    pod whose requests exceed the node's allocatable minus these, whatever a scheduler
    decided, so the scheduler checks the same sum before it binds."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Mapping[str, Decimal]]] = {}
        self._totals: dict[str, Counter[str]] = {}

    def hold(self, uid: str, node: str, requests: Mapping[str, Decimal]) -> None:
        self.drop(uid)
        if requests:
            self._held[uid] = (node, requests)
            self._totals.setdefault(node, Counter()).update(requests)

    def drop(self, uid: str) -> None:
        held = self._held.pop(uid, None)
        if held is not None:
            node, requests = held
            self._totals[node].subtract(requests)

    def shortfall(
        self, node: str, allocatable: Mapping[str, Decimal], requests: Mapping[str, Decimal]
    ) -> str:
        """Why the node cannot admit `requests` on top of what it holds ("" if it can).
        Only resources the node advertises are counted: the rest (HAMi's
        `nvidia.com/gpucores`, say) are its device backend's to account for."""
        held = self._totals.get(node, Counter())
        for name, amount in requests.items():
            if name not in allocatable:
                continue
            total = held[name] + amount
            if total > allocatable.get(name, Decimal(0)):
                have = allocatable.get(name, Decimal(0))
                return f"{node} cannot admit {name} {amount}: {total} of {have} allocatable"
        return ""
