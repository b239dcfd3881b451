"""Objects set aside instead of served: a pod with an unreadable annotation, a
ContinualTrainingJob whose spec cannot work, a job a policy failed on.

A rejection is counted once per object and problem (`gpufleet_rejected_objects_total`
with the object's kind and the field as `reason`), and logged as one structured line;
the caller tells the object's owner (an Event for pods and nodes, a status condition for
CTJs). The same problem on the same object is not reported again, so a bad object does
not flood the API server every pass; a different problem, or the object fixed and
broken again, is.
"""

from __future__ import annotations

import logging
from collections import Counter

from controller.kube.objects import Problem

log = logging.getLogger(__name__)

PRUNE_AT = 10_000


class Quarantine:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        """(kind, reason) → objects rejected."""
        self._reported: dict[str, Problem] = {}

    def reject(self, kind: str, key: str, uid: str, problem: Problem) -> bool:
        """Record that object `uid` (`key` for people) was set aside for `problem`.
        Returns False when it was already reported for exactly this problem."""
        if self._reported.get(uid) == problem:
            return False
        if len(self._reported) >= PRUNE_AT:
            self._reported.clear()  # at worst one more report each; never unbounded
        self._reported[uid] = problem
        self.counts[(kind, problem.field)] += 1
        fields = {"kind": kind, "object": key, "field": problem.field, "problem": problem.message}
        log.warning("rejected %s %s: %s", kind, key, problem, extra=fields)
        return True

    def clear(self, uid: str) -> None:
        """The object is gone or readable again."""
        self._reported.pop(uid, None)

    def total(self) -> int:
        return sum(self.counts.values())
