"""The cluster as policies see it: per-node and per-GPU resources in numpy arrays.

`ClusterState` is the mutable form. Hosts own one and apply decisions to it; a policy
gets a read-only copy (`view()`, numpy arrays flagged non-writeable) and, when it wants
to try placements within one pass, a private `scratch()` copy. Nodes keep the order
the host gives them, which both hosts make the node-name order, so the "lowest index
wins" tie-break is "first name wins".

Over 500 lines because the state's copies, scratch syncs and mirrors in another process
all rest on its private version stamps and change log, which stay in this one class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import networkx as nx
import numpy as np
import numpy.typing as npt

from policies.gpu_models import admits, node_model

MILLI = 1000
"""Milli-GPU in one whole GPU."""

IntArray = npt.NDArray[np.int64]
T = TypeVar("T", bound=np.generic)
BoolArray = npt.NDArray[np.bool_]

# GPU-pod classes tracked per node for GPU Clustering: column 0 holds sharing pods,
# column k holds pods that take k whole GPUs.
MAX_GPUS_PER_TASK = 16
SHARE_CLASS = 0


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True, slots=True)
class Toleration:
    """Tolerates a taint with the same key (and value, unless `exists`)."""

    key: str
    value: str = ""
    exists: bool = False
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.key and self.key != taint.key:
            return False
        if self.effect and self.effect != taint.effect:
            return False
        return self.exists or not self.key or self.value == taint.value


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node's capacity and identity, as read from a trace or from the API server."""

    name: str
    cpu_milli: int
    mem_mib: int
    gpus: int = 0
    gpu_model: str = ""
    """The model policies index by: `gpu_models.node_model` of the product."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    rack: str = ""
    gpu_product: str = ""
    """What the node reports (GFD's `nvidia.com/gpu.product`, a trace's model); kept as
    "" when that is `gpu_model` itself, so equal nodes compare equal."""
    shares_gpus: bool = True
    """False when its device plugin hands every task whole GPUs (the controller's
    `--backend=whole`): a task with a share of a GPU there holds all of it."""

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.mem_mib < 0 or self.gpus < 0:
            raise ValueError(f"node {self.name}: negative capacity")
        if self.gpus > 0 and not self.gpu_model:
            raise ValueError(f"node {self.name}: has GPUs but no GPU model")
        if self.gpu_product == self.gpu_model:
            object.__setattr__(self, "gpu_product", "")
        elif self.gpu_product and node_model(self.gpu_product) != self.gpu_model:
            raise ValueError(
                f"node {self.name}: GPU product {self.gpu_product!r} is model "
                f"{node_model(self.gpu_product)!r}, not {self.gpu_model!r}"
            )

    @property
    def product(self) -> str:
        """The GPU product as reported, for variant matching (`gpu_models.admits`)."""
        return self.gpu_product or self.gpu_model


SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")
"""Taint effects that keep a pod off a node unless it tolerates them."""


@dataclass(frozen=True, slots=True)
class LabelIndex:
    """Which nodes carry each label, each scheduling taint and each GPU product, as
    read-only arrays. None of these changes while a `ClusterState` lives, so the index
    is built once with it and never written (copies and read-only views share it); a
    mask costs a few numpy operations, not a scan of the nodes. Masks it returns may be
    shared and read-only: combine them into new arrays, never in place."""

    num_nodes: int
    label_codes: Mapping[str, IntArray]
    """Per label key, each node's value as a code (-1 where the node lacks the key)."""
    label_values: Mapping[str, Mapping[str, int]]
    """Per label key, the code of each value."""
    clear_of: tuple[tuple[Taint, BoolArray], ...]
    """Per NoSchedule/NoExecute taint, the nodes that do not carry it."""
    by_product: tuple[tuple[str, IntArray], ...]
    """GPU nodes only."""
    everywhere: BoolArray
    nowhere: BoolArray

    @classmethod
    def of(cls, nodes: Sequence[NodeSpec]) -> LabelIndex:
        codes: dict[str, IntArray] = {}
        values: dict[str, dict[str, int]] = {}
        taints: dict[Taint, list[int]] = {}
        products: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for key, value in n.labels.items():
                known = values.setdefault(key, {})
                code = known.setdefault(value, len(known))
                codes.setdefault(key, np.full(len(nodes), -1, dtype=np.int64))[i] = code
            for taint in n.taints:
                if taint.effect in SCHEDULING_EFFECTS:
                    taints.setdefault(taint, []).append(i)
            if n.gpus:
                products.setdefault(n.product, []).append(i)
        everywhere = read_only(np.ones(len(nodes), dtype=bool))
        clear_of = []
        for taint, rows in taints.items():
            clear = np.ones(len(nodes), dtype=bool)
            clear[rows] = False
            clear_of.append((taint, read_only(clear)))
        return cls(
            len(nodes),
            {key: read_only(c) for key, c in codes.items()},
            values,
            tuple(clear_of),
            tuple((product, _frozen(rows)) for product, rows in products.items()),
            everywhere,
            read_only(np.zeros(len(nodes), dtype=bool)),
        )

    def selector_mask(self, selector: Mapping[str, str]) -> BoolArray:
        """Nodes carrying every label of `selector`."""
        masks = []
        for key, value in selector.items():
            code = self.label_values.get(key, {}).get(value)
            if code is None:
                return self.nowhere
            masks.append(self.label_codes[key] == code)
        if len(masks) > 1:
            return np.logical_and.reduce(masks)
        return masks[0] if masks else self.everywhere

    def taint_mask(self, tolerations: Sequence[Toleration]) -> BoolArray:
        """Nodes whose NoSchedule and NoExecute taints `tolerations` all tolerate."""
        masks = [
            clear
            for taint, clear in self.clear_of
            if not any(t.tolerates(taint) for t in tolerations)
        ]
        if len(masks) > 1:
            return np.logical_and.reduce(masks)
        return masks[0] if masks else self.everywhere

    def product_mask(self, allowed: frozenset[str]) -> BoolArray:
        """GPU nodes whose product `allowed` admits (`gpu_models.admits`)."""
        mask = np.zeros(self.num_nodes, dtype=bool)
        for product, rows in self.by_product:
            if admits(allowed, product):
                mask[rows] = True
        return mask


def read_only(array: npt.NDArray[T]) -> npt.NDArray[T]:
    """`array`, flagged non-writeable: how a module-level or shared array is kept
    constant (tests/test_architecture.py allows module-level arrays only through this)."""
    array.flags.writeable = False
    return array


def _frozen(rows: list[int]) -> IntArray:
    return read_only(np.array(rows, dtype=np.int64))


_MUTABLE = (
    "cpu_free",
    "mem_free",
    "gpu_free",
    "whole_free",
    "most_free",
    "gpu_free_sum",
    "in_use",
    "pods_by_class",
    "version",
)
_FREE = tuple(name for name in _MUTABLE if name != "version")
"""The free resources, without the version stamps."""


class ClusterState:
    """Mutable cluster resources. Every change gives the node a fresh `version` stamp,
    drawn from a counter shared by all copies of one cluster, so equal stamps mean equal
    node state even across a host's state and a policy's scratch copies; policies can
    memoise per-node values on it and recompute only what changed."""

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.nodes: tuple[NodeSpec, ...] = tuple(nodes)
        self.node_index: dict[str, int] = {n: i for i, n in enumerate(names)}
        models = sorted({n.gpu_model for n in nodes if n.gpus > 0})
        self.gpu_models: tuple[str, ...] = tuple(models)
        model_idx = {m: i for i, m in enumerate(models)}
        width = max(1, max(n.gpus for n in nodes))
        count = len(nodes)
        self.cpu_cap: IntArray = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
        self.mem_cap: IntArray = np.array([n.mem_mib for n in nodes], dtype=np.int64)
        self.gpu_count: IntArray = np.array([n.gpus for n in nodes], dtype=np.int64)
        self._total_gpus = int(self.gpu_count.sum())
        self.model_idx: IntArray = np.array(
            [model_idx[n.gpu_model] if n.gpus else -1 for n in nodes], dtype=np.int64
        )
        self.cpu_free: IntArray = self.cpu_cap.copy()
        self.mem_free: IntArray = self.mem_cap.copy()
        # Padding GPUs (beyond a node's count) stay at 0 free, so they never fit anything.
        self.gpu_free: IntArray = np.zeros((count, width), dtype=np.int64)
        for i, n in enumerate(nodes):
            self.gpu_free[i, : n.gpus] = MILLI
        # Per node, kept with `gpu_free`: GPUs wholly free, the most milli-GPU free on one
        # GPU and the milli-GPU free in all. Feasibility and scores read these instead of
        # reducing `gpu_free` row by row (a 12,500 x 8 reduction per task at scale).
        self.whole_free: IntArray = self.gpu_count.copy()
        self.most_free: IntArray = np.where(self.gpu_count > 0, MILLI, 0)
        self.gpu_free_sum: IntArray = self.gpu_count * MILLI
        self.in_use: BoolArray = np.zeros(count, dtype=bool)
        """Nodes with anything allocated; the others have all their capacity free."""
        self.kinds: tuple[BoolArray, ...] | None = _kinds(self.nodes)
        """Nodes alike in capacity, GPU model and product, labels and taints, one mask a
        kind (None when there are more than `MAX_KINDS`): two free nodes of one kind pass
        every feasibility test alike and get equal resource scores."""
        self.pods_by_class: IntArray = np.zeros((count, MAX_GPUS_PER_TASK + 1), dtype=np.int64)
        self.version: IntArray = np.zeros(count, dtype=np.int64)
        self._stamps = _StampCounter()  # shared by copies: stamps never repeat
        self._changes = _ChangeLog(limit=4 * count + 1024)  # views share it, copies not
        self._synced: tuple[_ChangeLog, int] | None = None
        """For a scratch: the log it was last brought up to date from, and where."""
        self.has_taints = any(n.taints for n in nodes)
        self.shares_gpus: BoolArray = read_only(np.array([n.shares_gpus for n in nodes]))
        self.whole_only = frozenset(np.flatnonzero(~self.shares_gpus).tolist())
        """Nodes whose GPUs cannot be shared: any task on a GPU there takes all of it."""
        self.label_index = LabelIndex.of(self.nodes)  # immutable: copies and views share it

    # -- derived ------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def total_gpus(self) -> int:
        return self._total_gpus

    def gpu_free_total(self) -> IntArray:
        """Idle milli-GPU per node (a copy of `gpu_free_sum`)."""
        return self.gpu_free_sum.copy()

    def allocated_gpu_milli(self) -> int:
        return int(self.total_gpus * MILLI - self.gpu_free_sum.sum())

    def gpus_of_model(self) -> dict[str, int]:
        return {
            m: int(self.gpu_count[self.model_idx == i].sum()) for i, m in enumerate(self.gpu_models)
        }

    # -- changes --------------------------------------------------------------------

    def allocate(
        self, node: int, gpus: Sequence[int], gpu_milli: int, cpu_milli: int, mem_mib: int
    ) -> None:
        """Take one task's resources; raises if they are not free (never over-commits)."""
        if node in self.whole_only:
            gpu_milli = MILLI
        self._check_fits(node, gpus, gpu_milli, cpu_milli, mem_mib)
        self.cpu_free[node] -= cpu_milli
        self.mem_free[node] -= mem_mib
        for g in gpus:
            self.gpu_free[node, g] -= gpu_milli
        if gpus:
            self.pods_by_class[node, task_class(len(gpus), gpu_milli)] += 1
            self._count_free(node)
        self.in_use[node] = True
        self.version[node] = self._stamps.next()
        self._changes.add(node)

    def release(
        self, node: int, gpus: Sequence[int], gpu_milli: int, cpu_milli: int, mem_mib: int
    ) -> None:
        """Return one task's resources."""
        if node in self.whole_only:
            gpu_milli = MILLI
        self.cpu_free[node] += cpu_milli
        self.mem_free[node] += mem_mib
        for g in gpus:
            self.gpu_free[node, g] += gpu_milli
        most = 0
        if gpus:
            self.pods_by_class[node, task_class(len(gpus), gpu_milli)] -= 1
            most = self._count_free(node)
        if (
            self.cpu_free[node] > self.cpu_cap[node]
            or self.mem_free[node] > self.mem_cap[node]
            or most > MILLI
        ):
            raise ValueError(f"release on {self.nodes[node].name} returned more than was taken")
        self.in_use[node] = (
            self.cpu_free[node] != self.cpu_cap[node]
            or self.mem_free[node] != self.mem_cap[node]
            or self.gpu_free_sum[node] != self.gpu_count[node] * MILLI
        )
        self.version[node] = self._stamps.next()
        self._changes.add(node)

    def _count_free(self, node: int) -> int:
        """Refresh the node's free-GPU summaries; returns the most free on one GPU."""
        free = self.gpu_free[node].tolist()  # a few GPUs: Python beats numpy reductions
        most = max(free)
        self.whole_free[node] = free.count(MILLI)
        self.most_free[node] = most
        self.gpu_free_sum[node] = sum(free)
        return most

    def _check_fits(
        self, node: int, gpus: Sequence[int], gpu_milli: int, cpu_milli: int, mem_mib: int
    ) -> None:
        name = self.nodes[node].name
        if cpu_milli > self.cpu_free[node] or mem_mib > self.mem_free[node]:
            raise ValueError(f"{name}: not enough CPU or memory free")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"{name}: a GPU index is repeated")
        for g in gpus:
            if not 0 <= g < self.gpu_count[node] or self.gpu_free[node, g] < gpu_milli:
                raise ValueError(f"{name}: GPU {g} cannot take {gpu_milli} milli")

    def copy(self) -> ClusterState:
        """A writeable copy; capacities and node specs are shared, free resources copied."""
        clone = object.__new__(ClusterState)
        clone.__dict__.update(self.__dict__)
        for name in _MUTABLE:
            setattr(clone, name, getattr(self, name).copy())
        clone._changes = _ChangeLog(self._changes.limit)
        clone._synced = None
        return clone

    def view(self) -> ClusterState:
        """A read-only view for a policy: its arrays share memory with this state (no copy)
        but refuse writes. Valid until the host next changes this state."""
        clone = object.__new__(ClusterState)
        clone.__dict__.update(self.__dict__)
        for name in _MUTABLE:
            array = getattr(self, name).view()
            array.flags.writeable = False
            setattr(clone, name, array)
        return clone

    def scratch(self, reuse: ClusterState | None = None) -> ClusterState:
        """A private writeable copy for trying placements within one pass.

        `reuse`, a scratch of this cluster from an earlier pass that nothing reads any
        more, is brought up to date instead: only the nodes either side changed since are
        copied, so a pass costs O(changed nodes), not a copy of every array (2 MB a pass
        at 12,500 nodes) nor a comparison of every node's version stamp."""
        if reuse is None or reuse._stamps is not self._stamps or reuse.nodes is not self.nodes:
            clone = self.copy()
        else:
            clone = reuse
            self._copy_nodes(clone, self._changed_since_sync(clone))
            clone._changes = _ChangeLog(clone._changes.limit)
        clone._synced = (self._changes, self._changes.end)
        return clone

    def _changed_since_sync(self, scratch: ClusterState) -> Sequence[int] | IntArray:
        """Nodes where `scratch` may differ from this state: those changed on either side
        since it was last brought up to date from this state's log, or, when either log
        has been trimmed since, those whose version stamps differ."""
        synced = scratch._synced
        if synced is not None and synced[0] is self._changes and not scratch._changes.dropped:
            ours = self._changes.since(synced[1])
            if ours is not None:
                return list({*ours, *scratch._changes.nodes})
        return np.flatnonzero(scratch.version != self.version)

    def _copy_nodes(self, target: ClusterState, nodes: Sequence[int] | IntArray) -> None:
        """Copy these nodes' free resources into `target`: node by node when they are a
        few (a pass changes one or two; nine fancy-indexed copies cost more), else at once."""
        if len(nodes) > 8:
            rows = np.asarray(nodes, dtype=np.int64)
            for name in _MUTABLE:
                getattr(target, name)[rows] = getattr(self, name)[rows]
            return
        for name in _MUTABLE:
            ours, theirs = getattr(self, name), getattr(target, name)
            for node in nodes:
                theirs[node] = ours[node]

    def changed_since(self, earlier: ClusterState) -> IntArray | None:
        """Nodes whose free resources may differ from `earlier`, an earlier copy of this
        cluster; None when it is not one (a state built anew, whose stamps mean nothing
        here)."""
        if earlier._stamps is not self._stamps:
            return None
        return np.flatnonzero(earlier.version != self.version)

    def node_rows(self, nodes: IntArray) -> dict[str, IntArray]:
        """These nodes' free resources, for `set_node_rows` on a copy of this state kept
        elsewhere (another process mirroring it)."""
        return {name: getattr(self, name)[nodes] for name in _FREE}

    def set_node_rows(self, nodes: IntArray, rows: Mapping[str, IntArray]) -> None:
        """Give these nodes the free resources `rows` (from `node_rows` of the state this
        one mirrors). Each gets a fresh stamp of this state's own, as any change does:
        the other state's stamps come from another counter."""
        for name in _FREE:
            getattr(self, name)[nodes] = rows[name]
        for node in nodes.tolist():
            self.version[node] = self._stamps.next()
            self._changes.add(node)

    def topology(self) -> nx.DiGraph:
        """GPU → node → rack → cluster, with `kind` on every vertex."""
        graph = nx.DiGraph()
        graph.add_node("cluster", kind="cluster")
        for n in self.nodes:
            rack = f"rack/{n.rack or 'default'}"
            if rack not in graph:
                graph.add_node(rack, kind="rack")
                graph.add_edge(rack, "cluster")
            graph.add_node(n.name, kind="node", gpu_model=n.gpu_model)
            graph.add_edge(n.name, rack)
            for g in range(n.gpus):
                gpu = f"{n.name}/gpu{g}"
                graph.add_node(gpu, kind="gpu", index=g)
                graph.add_edge(gpu, n.name)
        return graph

    def rack_of(self, node: int) -> str:
        return self.nodes[node].rack or "default"


MAX_KINDS = 16
"""Past this many kinds of node, `ClusterState.kinds` is not kept (a mask a kind)."""


def _kinds(nodes: Sequence[NodeSpec]) -> tuple[BoolArray, ...] | None:
    rows: dict[tuple[object, ...], list[int]] = {}
    for i, n in enumerate(nodes):
        labels = tuple(sorted(n.labels.items()))
        gpus = (n.gpus, n.gpu_model, n.product, n.shares_gpus)
        key = (n.cpu_milli, n.mem_mib, gpus, labels, n.taints)
        rows.setdefault(key, []).append(i)
        if len(rows) > MAX_KINDS:
            return None
    masks = []
    for members in rows.values():
        mask = np.zeros(len(nodes), dtype=bool)
        mask[members] = True
        masks.append(read_only(mask))
    return tuple(masks)


class _ChangeLog:
    """The nodes a state changed, in order, for scratch copies to catch up from. It keeps
    at most `limit` entries: then it is emptied and `dropped` counts the entries gone, so
    a scratch synced before then falls back to comparing version stamps."""

    __slots__ = ("dropped", "limit", "nodes")

    def __init__(self, limit: int) -> None:
        self.nodes: list[int] = []
        self.dropped = 0
        self.limit = limit

    @property
    def end(self) -> int:
        return self.dropped + len(self.nodes)

    def add(self, node: int) -> None:
        if len(self.nodes) >= self.limit:
            self.dropped += len(self.nodes)
            self.nodes.clear()
        self.nodes.append(node)

    def since(self, position: int) -> list[int] | None:
        """Nodes changed from `position` (an earlier `end`) on; None if trimmed since."""
        if position < self.dropped:
            return None
        return self.nodes[position - self.dropped :]


class _StampCounter:
    """Hands out increasing version stamps (a plain class, so states stay picklable)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


def task_class(num_gpus: int, gpu_milli: int) -> int:
    """Column of `pods_by_class` for a task: 0 for a sharing task, else its GPU count."""
    if num_gpus == 1 and gpu_milli < MILLI:
        return SHARE_CLASS
    return min(num_gpus, MAX_GPUS_PER_TASK)
