"""The reconciler's pure core: which pods a ContinualTrainingJob should have, what its
status says, and that replaying a plan's result changes nothing (level-triggered)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.ctj.crd import (
    NAME_LABEL,
    PHASE_COMPLETED,
    PHASE_INVALID,
    PHASE_PENDING,
    PHASE_RETRAINING,
    PHASE_WAITING,
    WINDOW_DEADLINE,
    WINDOW_LABEL,
    Ctj,
    WindowOutcome,
    ctj_from_json,
)
from controller.ctj.plan import RETRY_DELAY_S, CtjPod, Plan, ctj_pod_from_json, plan
from controller.kube.objects import GANG_SIZE, GPU_MILLI, GPU_MODELS, POD_GROUP_LABEL, SUBMIT_TIME
from controller.scheduling.effects import now_rfc3339
from policies.windows import COMPLETED, MISSED

CREATED = 1_700_000_000.0
UID = "uid-1"


def ctj(**spec: Any) -> Ctj:
    body: dict[str, Any] = {
        "image": "retrain:1",
        "retrain": {"windowSeconds": 100, "deadlineSeconds": 60},
        "resources": {"gpu": {"count": 1}},
        "replicas": {"min": 2},
    }
    body.update(spec)
    return ctj_from_json(
        {
            "metadata": {
                "name": "cam",
                "namespace": "ns",
                "uid": UID,
                "generation": 1,
                "creationTimestamp": now_rfc3339(CREATED),
            },
            "spec": body,
        }
    )


def pods_of(result: Plan, phase: str = "Pending", node: str = "") -> list[CtjPod]:
    """The pods a plan creates, as the API would report them."""
    out = []
    for manifest in result.create:
        obj = {**manifest, "spec": {**manifest["spec"], "nodeName": node}}
        obj["metadata"] = {**manifest["metadata"], "uid": manifest["metadata"]["name"]}
        obj["status"] = {"phase": phase}
        pod = ctj_pod_from_json(obj)
        assert pod is not None
        out.append(pod)
    return out


def finished(pods: list[CtjPod], at: float, phase: str = "Succeeded") -> list[CtjPod]:
    return [replace(p, phase=phase, node="n0", finished_at=at) for p in pods]


def advance(job: Ctj, result: Plan) -> Ctj:
    """The object after the plan's status was written."""
    return replace(job, status=result.status)


def test_first_pass_creates_the_gang_of_window_0() -> None:
    job = ctj(
        resources={
            "gpu": {"count": 1, "milli": 500, "memoryMiB": 8000},
            "gpuTypes": [
                {"model": "A100", "relativeThroughput": 1.0},
                {"model": "T4", "relativeThroughput": 0.3},
            ],
        }
    )
    result = plan(job, [], CREATED + 5, "gpufleet")
    assert [p["metadata"]["name"] for p in result.create] == ["cam-w0-0", "cam-w0-1"]
    pod = result.create[0]
    meta = pod["metadata"]
    assert meta["labels"][NAME_LABEL] == "cam" and meta["labels"][WINDOW_LABEL] == "0"
    assert meta["labels"][POD_GROUP_LABEL] == "cam-w0"
    assert meta["annotations"][GANG_SIZE] == "2"
    assert meta["annotations"][GPU_MILLI] == "500"
    assert meta["annotations"][GPU_MODELS] == "A100|T4"
    assert float(meta["annotations"][SUBMIT_TIME]) == CREATED
    assert float(meta["annotations"][WINDOW_DEADLINE]) == CREATED + 60
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ContinualTrainingJob", UID, True)
    assert pod["spec"]["schedulerName"] == "gpufleet"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert result.status.phase == PHASE_RETRAINING
    assert result.status.current_window is not None
    assert result.status.current_window.index == 0
    assert result.requeue_at == CREATED + 60
    assert result.recorded == () and result.delete == ()


def test_non_gang_pods_carry_no_group_label() -> None:
    result = plan(ctj(gang=False), [], CREATED, "gpufleet")
    assert all(POD_GROUP_LABEL not in p["metadata"]["labels"] for p in result.create)


def test_window_completed_in_time_then_next_window_then_cleanup() -> None:
    job = ctj()
    first = plan(job, [], CREATED + 1, "gpufleet")
    w0 = finished(pods_of(first), at=CREATED + 30)
    done = plan(advance(job, first), w0, CREATED + 31, "gpufleet")
    assert done.recorded == (WindowOutcome(0, COMPLETED, "RetrainedInTime", CREATED + 30),)
    assert done.status.phase == PHASE_WAITING
    assert done.status.last_retrain == CREATED + 30
    assert done.status.completed_windows == 1 and done.status.missed_deadlines == 0
    assert done.create == () and done.delete == ()  # historyLimit 1 keeps window 0's pods
    assert done.requeue_at == CREATED + 100
    job = advance(job, done)
    opened = plan(job, w0, CREATED + 100, "gpufleet")
    assert [p["metadata"]["name"] for p in opened.create] == ["cam-w1-0", "cam-w1-1"]
    assert opened.delete == ()
    w1 = finished(pods_of(opened), at=CREATED + 150)
    closed = plan(advance(job, opened), w0 + w1, CREATED + 151, "gpufleet")
    assert {p.name for p in closed.delete} == {"cam-w0-0", "cam-w0-1"}
    assert closed.status.completed_windows == 2


def test_deadline_passed_withdraws_running_pods() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    running = pods_of(first, phase="Running", node="n0")
    late = plan(advance(job, first), running, CREATED + 60, "gpufleet")
    assert late.recorded == (WindowOutcome(0, MISSED, "DeadlinePassed"),)
    assert {p.name for p in late.delete} == {"cam-w0-0", "cam-w0-1"}
    assert late.status.missed_deadlines == 1
    assert late.status.phase == PHASE_WAITING
    condition = late.status.condition("DeadlineMet")
    assert condition is not None and (condition.status, condition.reason) == (
        "False",
        "DeadlinePassed",
    )


def test_unbound_pods_at_the_deadline_are_reported_unschedulable() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    late = plan(advance(job, first), pods_of(first), CREATED + 61, "gpufleet")
    assert late.recorded == (WindowOutcome(0, MISSED, "Unschedulable"),)


def test_a_failed_replica_is_retried_within_its_window() -> None:
    """10 s after a replica fails the window's pods are withdrawn (the gang runs whole)
    and recreated; the window completes if the new attempt finishes by the deadline."""
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    job = advance(job, first)
    pods = pods_of(first, phase="Running", node="n0")
    pods[1] = replace(pods[1], phase="Failed", finished_at=CREATED + 10)
    waiting = plan(job, pods, CREATED + 11, "gpufleet")
    assert (waiting.recorded, waiting.delete, waiting.create) == ((), (), ())
    assert waiting.requeue_at == CREATED + 10 + RETRY_DELAY_S
    retry = plan(job, pods, CREATED + 20, "gpufleet")
    assert retry.recorded == () and sorted(p.name for p in retry.delete) == ["cam-w0-0", "cam-w0-1"]
    leaving = [replace(p, deleting=True) for p in pods]
    assert plan(job, leaving, CREATED + 20.5, "gpufleet").create == ()  # names still taken
    again = plan(job, [], CREATED + 21, "gpufleet")
    assert [p["metadata"]["name"] for p in again.create] == ["cam-w0-0", "cam-w0-1"]
    done = plan(advance(job, again), finished(pods_of(again), CREATED + 50), CREATED + 51, "x")
    assert done.recorded == (WindowOutcome(0, COMPLETED, "RetrainedInTime", CREATED + 50),)


def test_a_replica_failed_too_late_for_a_retry_misses_the_window_at_the_deadline() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    pods = pods_of(first, phase="Running", node="n0")
    pods[1] = replace(pods[1], phase="Failed", finished_at=CREATED + 55)
    failed = plan(advance(job, first), pods, CREATED + 60, "gpufleet")
    assert failed.recorded == (WindowOutcome(0, MISSED, "PodFailed"),)
    assert [p.name for p in failed.delete] == ["cam-w0-0"]  # the failed one stays for logs


def test_success_seen_after_the_deadline_counts_by_finish_time() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    on_time = plan(advance(job, first), finished(pods_of(first), CREATED + 59), CREATED + 80, "x")
    assert on_time.recorded[0].outcome == COMPLETED
    late = plan(advance(job, first), finished(pods_of(first), CREATED + 61), CREATED + 80, "x")
    assert late.recorded[0].reason == "FinishedLate"


def test_replanning_after_writing_the_status_is_a_no_op() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    pods = finished(pods_of(first), at=CREATED + 20)
    done = plan(advance(job, first), pods, CREATED + 21, "gpufleet")
    again = plan(advance(job, done), pods, CREATED + 22, "gpufleet")
    assert again.recorded == () and again.create == () and again.delete == ()
    assert again.status == done.status


def test_windows_that_went_by_without_pods_are_missed_and_counted_once() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    # The controller was down for 10,000 windows.
    back = plan(advance(job, first), pods_of(first), CREATED + 100 * 10_000 + 5, "gpufleet")
    assert back.status.windows_recorded == 10_000
    assert back.status.missed_deadlines == 10_000
    assert back.status.current_window is not None
    assert back.status.current_window.index == 10_000
    assert [h.index for h in back.status.history] == list(range(9_995, 10_000))
    assert back.status.history[0].reason == "NotStarted"
    assert back.recorded[0] == WindowOutcome(0, MISSED, "Unschedulable")
    assert len(back.create) == 2


def test_window_limit_completes_the_job() -> None:
    job = ctj(retrain={"windowSeconds": 100, "deadlineSeconds": 60, "windows": 1})
    first = plan(job, [], CREATED, "gpufleet")
    pods = finished(pods_of(first), at=CREATED + 10)
    done = plan(advance(job, first), pods, CREATED + 11, "gpufleet")
    assert done.status.phase == PHASE_COMPLETED and done.requeue_at is None
    later = plan(advance(job, done), pods, CREATED + 500, "gpufleet")
    assert later.create == () and later.recorded == ()
    assert later.status.phase == PHASE_COMPLETED


def test_pods_of_an_earlier_object_with_the_same_name_are_deleted() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    old = [replace(p, owner_uid="uid-0") for p in pods_of(first)]
    ownerless = replace(old[0], name="manual", owner_uid="")
    result = plan(job, [*old, ownerless], CREATED + 1, "gpufleet")
    assert {p.name for p in result.delete} == {"cam-w0-0", "cam-w0-1"}
    assert len(result.create) == 2


def test_cron_schedule_before_its_first_firing_is_pending() -> None:
    job = ctj(retrain={"schedule": "0 0 1 1 *", "deadlineSeconds": 60})
    result = plan(job, [], CREATED, "gpufleet")
    assert result.status.phase == PHASE_PENDING and result.create == ()
    assert result.requeue_at is not None and result.requeue_at > CREATED


def test_cron_schedule_that_never_fires_makes_the_job_invalid() -> None:
    job = ctj(retrain={"schedule": "0 0 30 2 *", "deadlineSeconds": 60})
    result = plan(job, [], CREATED, "gpufleet")
    assert result.status.phase == PHASE_INVALID and result.create == ()
    condition = result.status.condition("ScheduleValid")
    assert condition is not None and "never fires" in condition.message


def test_a_cron_value_out_of_range_makes_the_job_invalid_naming_the_field() -> None:
    job = ctj(retrain={"schedule": "5,61 * * * * *", "deadlineSeconds": 60})
    result = plan(job, [], CREATED, "gpufleet")
    assert result.status.phase == PHASE_INVALID and result.create == ()
    condition = result.status.condition("ScheduleValid")
    assert condition is not None and condition.reason == "InvalidSpec"
    assert condition.message == (
        "spec.retrain.schedule: cron second field '5,61': values must lie in 0-59"
    )


def test_a_job_made_invalid_mid_window_keeps_its_pods_until_their_deadline() -> None:
    """Window 0 (deadline CREATED + 60) runs two pods; the spec is then edited to a cron
    value the controller refuses. The pods run on (nothing is lost) and the reconciler
    looks again at their deadline, where it withdraws the unfinished one, as it would
    for a valid job; the one that finished stays for the fixed spec to record."""
    first = plan(ctj(), [], CREATED + 1, "gpufleet")
    running = pods_of(first, phase="Running", node="n0")
    invalid = replace(
        ctj(retrain={"schedule": "5,61 * * * * *", "deadlineSeconds": 60}),
        status=first.status,
    )
    during = plan(invalid, running, CREATED + 30, "gpufleet")
    assert during.status.phase == PHASE_INVALID
    assert during.delete == () and during.create == ()
    assert during.requeue_at == CREATED + 60
    done, late = finished(running[:1], at=CREATED + 50)[0], running[1]
    after = plan(invalid, [done, late], CREATED + 61, "gpufleet")
    assert after.delete == (late,)
    assert after.requeue_at is None and after.recorded == ()


def test_condition_transition_time_is_kept_while_the_state_is_unchanged() -> None:
    job = ctj()
    first = plan(job, [], CREATED, "gpufleet")
    later = plan(advance(job, first), pods_of(first), CREATED + 30, "gpufleet")
    before, after = first.status.condition("Retraining"), later.status.condition("Retraining")
    assert before is not None and after is not None
    assert after.last_transition == before.last_transition == CREATED
