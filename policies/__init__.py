"""gpufleet's scheduling logic: the cluster view, the policy API and every policy.

Pure by contract: no I/O, no clock, no simpy or kubernetes. The simulator and the
Kubernetes controller import these objects unchanged.
"""

from policies import (
    accuracy_aware,
    best_fit,
    continual,
    dot_product,
    fgd,
    fifo,
    gpu_clustering,
    gpu_packing,
    las,
    random_fit,
)
from policies.base import (
    Context,
    PlacementConfig,
    PlacementPolicy,
    Policy,
    PolicyConfig,
    RoundPolicy,
    Snapshot,
)
from policies.cluster import MILLI, ClusterState, NodeSpec, Taint, Toleration
from policies.decisions import (
    Decision,
    Place,
    Preempt,
    Resize,
    SchedulingResult,
    Unschedulable,
)
from policies.jobs import (
    AllocationShape,
    Elasticity,
    FixedDuration,
    JobSpec,
    JobStatus,
    JobView,
    ModelThroughput,
    PartShape,
    Placement,
    SlowsHosts,
    TaskPlacement,
    TaskRequest,
    WorkModel,
)
from policies.registry import make_policy, policy_class, policy_names

__all__ = [
    "MILLI",
    "AllocationShape",
    "ClusterState",
    "Context",
    "Decision",
    "Elasticity",
    "FixedDuration",
    "JobSpec",
    "JobStatus",
    "JobView",
    "ModelThroughput",
    "NodeSpec",
    "PartShape",
    "Place",
    "Placement",
    "PlacementConfig",
    "PlacementPolicy",
    "Policy",
    "PolicyConfig",
    "Preempt",
    "Resize",
    "RoundPolicy",
    "SchedulingResult",
    "SlowsHosts",
    "Snapshot",
    "Taint",
    "TaskPlacement",
    "TaskRequest",
    "Toleration",
    "Unschedulable",
    "WorkModel",
    "accuracy_aware",
    "best_fit",
    "continual",
    "dot_product",
    "fifo",
    "gpu_clustering",
    "gpu_packing",
    "las",
    "make_policy",
    "policy_class",
    "policy_names",
    "random_fit",
]
