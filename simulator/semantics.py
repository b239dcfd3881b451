"""What a run means for a given trace format and policy, decided in one place.

`gpufleet simulate`, `gpufleet compare` and `gpufleet experiment hetero` all ask
`run_semantics`, so the same trace, cluster, policy and seed give the same run whichever
command starts it. Each rule follows the simulator that published the trace format:

- **sia** (Sia's `sia-simulator`): a policy that adapts jobs (Sia) gets each job as its
  trace's category says (adaptive when it says nothing); every other policy runs the
  TunedJobs GPUs and batch rigidly, as the Sia paper ran Gavel, Pollux's baselines and
  FIFO. Every launch, the first included, pays the application's checkpoint-restore
  delay (`traces.sia.RESTART_DELAY_S`). Gavel runs the Sia artifact's port of its
  mechanism (`mechanism=sia-artifact`: X every round, one queue across GPU models).
- **gavel-generated** (jobs drawn by Gavel's generator from its throughput file, as
  `experiment hetero --gavel-traces` runs them; Gavel's `scheduler.py` simulation): jobs
  are rigid and Gavel charges no checkpoint or restart time: a job runs
  `throughput × round` steps from the moment it is placed. Gavel runs its own mechanism
  (`mechanism=gavel`, the default).
- every other format (`gavel` included: fixed-duration jobs drawn from Gavel's Philly
  distribution): a job pays the restart delay when it is restarted (preempted or
  resized), not on its first start; the delay is the trace's own, else the command's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies import Policy
from policies.elastic import RIGID

DEFAULT_RESTART_COST_S = 30.0
GAVEL_GENERATED = "gavel-generated"


@dataclass(frozen=True)
class RunSemantics:
    job_mode: str | None
    """Category forced on every job of a Sia workload (`rigid`), or None to keep the trace's."""
    startup_delay: bool
    """Charge the restart delay on a job's first start too."""
    restart_cost_s: float
    """Restart delay for jobs whose trace gives none."""
    follows: str
    """The published simulator these rules follow, for `config.json` and listings."""
    policy_defaults: tuple[tuple[str, str], ...] = ()
    """Policy options this simulator implied (a command's own `-o` wins), for policies
    whose config has them."""

    def policy_options(self, policy: type[Policy], options: Mapping[str, Any]) -> dict[str, Any]:
        """`options` over the defaults this semantics implies for `policy`."""
        known = {f.name for f in dataclasses.fields(policy.config_type)}
        return {**{k: v for k, v in self.policy_defaults if k in known}, **options}


def run_semantics(
    trace_format: str, policy: type[Policy] | Policy, restart_cost_s: float | None = None
) -> RunSemantics:
    """The semantics of running `policy` on a trace of `trace_format`; `restart_cost_s`
    overrides the delay for jobs whose trace gives none (a command's `--restart-cost`)."""
    if trace_format == "sia":
        mode = None if adapts_jobs(policy) else RIGID
        cost = DEFAULT_RESTART_COST_S if restart_cost_s is None else restart_cost_s
        follows = "sia-simulator (siasosp23/artifacts)"
        return RunSemantics(mode, True, cost, follows, (("mechanism", "sia-artifact"),))
    if trace_format == GAVEL_GENERATED:
        cost = 0.0 if restart_cost_s is None else restart_cost_s
        return RunSemantics(None, False, cost, "Gavel's simulator (stanford-futuredata/gavel)")
    cost = DEFAULT_RESTART_COST_S if restart_cost_s is None else restart_cost_s
    return RunSemantics(None, False, cost, "gpufleet: restart delay on restarts only")


def adapts_jobs(policy: type[Policy] | Policy) -> bool:
    """Whether `policy` tunes its jobs' GPU count and batch size (Sia does)."""
    return bool(getattr(policy, "adapts_jobs", False))


SEMANTICS_HELP = (
    "Trace formats run as their published simulators ran them: sia workloads as "
    "sia-simulator (Sia adapts jobs, every other policy runs TunedJobs rigidly; every "
    "launch pays the checkpoint-restore delay; Gavel as the Sia artifact's port, "
    "-o mechanism=sia-artifact), Gavel's generated traces as Gavel's simulator "
    "(rigid, no restart cost), others with the restart delay on restarts only."
)
