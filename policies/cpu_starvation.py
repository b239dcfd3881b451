"""CPU-starved GPUs: the idle GPU a node's free CPU cannot feed (FGD's default tie-break).

FGD's measure asks whether the *next* task of each type fits on a node. A node's idle
GPUs are used by many future tasks, though, and each brings its CPU: at the target
workload's mix, ρ CPU milli arrive with every milli-GPU asked. A node with c free CPU
can therefore feed c/ρ of its U idle milli-GPU; the rest,

    S_n = max(0, U_n − c_n / ρ),

will be stranded for lack of CPU, in expectation, whatever arrives: the fragmentation
of the node's whole idle capacity rather than of one more task. ρ is taken per GPU
model, over the types that may use that model, each weighted as FGD's default weighs
its fragments (`cpu_per_gpu_milli`). Every task type counts, CPU-only ones included:
the CPU-only tasks that arrive with each GPU's worth of GPU tasks take CPU on the same
nodes (docs/fgd.md §3 compares this with counting GPU task types only).

FGD's default breaks ties between equally scored nodes by the least increase of S
(`starvation_change`): a task that uses a node's CPU without using its GPUs in the
same proportion goes where the CPU is spare, not where the GPUs need it.
"""

from __future__ import annotations

import numpy as np

from policies.cluster import MILLI, ClusterState, IntArray
from policies.fragmentation import FloatArray, WorkloadArrays
from policies.jobs import TaskRequest


def cpu_per_gpu_milli(arrays: WorkloadArrays, weights: FloatArray) -> FloatArray:
    """ρ per GPU model (rows of `arrays.access`, GPU-less last): the CPU milli asked by
    the types that may use the model per milli-GPU asked by its GPU types, each type
    weighted by `weights`; 0 where no GPU type may use the model.

    FGD passes its Δ weights, p_m · C/C_m (`fragmentation.scarcity_weights`): type m's
    arrivals spread over the C_m GPUs it may use, so per GPU of a model it may use it
    arrives in proportion to p_m / C_m. A model that some types need (T4 for T4-only
    tasks) gets their CPU per GPU more than its share of arrivals would give it."""
    asked_gpu = arrays.access @ (weights * arrays.num * arrays.milli)
    asked_cpu = arrays.access @ (weights * arrays.cpu)
    return np.where(asked_gpu > 0, asked_cpu / np.maximum(asked_gpu, 1.0), 0.0)


def gpu_fed_per_cpu(rho_by_model: FloatArray) -> FloatArray:
    """1/ρ per GPU model, GPU-less last, so that `state.model_idx` indexes it (0 where no
    GPU type may use the model: all of its idle GPU counts as starved, as the paper
    counts it all fragmented)."""
    return np.divide(1.0, rho_by_model, out=np.zeros_like(rho_by_model), where=rho_by_model > 0)


def starved_milli(cpu_free: FloatArray, idle_milli: FloatArray, fed: FloatArray) -> FloatArray:
    """S = max(0, U − c/ρ) per node, given 1/ρ as `fed`."""
    return np.maximum(0.0, idle_milli - cpu_free * fed)


def starvation_change(
    state: ClusterState, task: TaskRequest, nodes: IntArray, fed: FloatArray
) -> FloatArray:
    """The change of S on each of `nodes` if `task` went there (`fed`: 1/ρ on each of
    them, from `gpu_fed_per_cpu`), rounded to 10⁻⁶ milli-GPU so that changes equal in exact
    arithmetic compare equal (and fall to the next tie rule) whatever the rounding of
    the node's own numbers."""
    before = state.gpu_free_sum[nodes] - state.cpu_free[nodes] * fed
    taken: IntArray | int = task.gpu_total_milli
    if task.is_sharing and state.whole_only:  # a whole GPU where GPUs cannot be shared
        taken = np.where(state.shares_gpus[nodes], task.gpu_total_milli, MILLI)
    after = before + (task.cpu_milli * fed - taken)
    return np.round(np.maximum(after, 0.0) - np.maximum(before, 0.0), 6)
