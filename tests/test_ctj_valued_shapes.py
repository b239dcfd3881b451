"""Valued CTJs (with `accuracy` and `retrain.configs`: streams the continual allocators
value) whose shape no stream can take are refused where they are read, naming the
field, and the CTJs and pods beside them are served as before:

* `resources.gpu.count` above 1: a stream's replica is one GPU. Before, `stream_of`
  raised while the policy chose the configs of every window opening at that instant,
  so a healthy CTJ opening beside it failed its reconciles too.
* `gang: false` with `replicas.min` above 1: the controller created `replicas.min`
  one-GPU jobs that each retrained the whole config, the simulator one window job on
  1 to `replicas.max` GPUs.
* `replicas.min` to `replicas.max` holding none of 1, 2, 4 and 8 GPUs: `thief`, `edf`
  and `fairshare` give only those, so a window of min 3 and max 3 waited forever.

The same shapes without accuracy are plain gangs and are served; min 3 with max 4 is
placed on 4 GPUs (hand-worked: 200 reference-GPU-seconds on 4 A100s at speed-up
4·0.9² = 3.24, from the first round at 2 s: 2 + 200/3.24 = 63.728 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.ctj.continual import JointConfigs, WindowChoice
from controller.ctj.crd import KIND, MAX_REPLICAS, GpuRequest, ctj_from_json
from controller.ctj.plan import SCHEDULE_VALID, plan
from controller.ctj.reconciler import CTJS, CtjReconciler
from controller.kube.objects import GANG_SIZE, POD_GROUP_LABEL, pod_from_json
from controller.scheduling.cache import NODES, ClusterCache
from controller.scheduling.encoders import WholeGpu
from controller.scheduling.workload import build_workload
from policies import NodeSpec, make_policy
from policies.continual import WindowOpening, has_whole_share
from simulator.continual import STREAM_COLUMNS, ContinualRun
from tests.test_controller_scheduler import node_json, one_round
from tests.test_ctj_min_replicas import OPENS, ROUND_S, ctj_json, stream
from traces.continual import ContinualSpec, generate_streams, read_streams, write_streams

Change = Callable[[dict[str, Any]], None]


def gpus_per_replica(spec: dict[str, Any]) -> None:
    spec["replicas"] = {"min": 1, "max": 1}
    spec["resources"]["gpu"]["count"] = 2


def no_gang(spec: dict[str, Any]) -> None:
    spec["gang"] = False


def bounds(low: int, high: int) -> Change:
    def change(spec: dict[str, Any]) -> None:
        spec["replicas"] = {"min": low, "max": high}

    return change


REFUSED = [
    (gpus_per_replica, "spec.resources.gpu.count", "above 1 is not supported with accuracy"),
    (no_gang, "spec.gang", "false needs replicas.min 1 with accuracy and retrain.configs"),
    (bounds(3, 3), "spec.replicas", "min 3 to max 3 must include 1, 2, 4 or 8 GPUs"),
    (bounds(9, 16), "spec.replicas", "min 9 to max 16 must include 1, 2, 4 or 8 GPUs"),
]


def changed(change: Change, name: str = "lower", valued: bool = True) -> dict[str, Any]:
    body = ctj_json(name=name)  # min 2, max 4, whole GPUs, one config, at 0.5
    change(body["spec"])
    if not valued:
        del body["spec"]["accuracy"]
    return body


@pytest.mark.parametrize(("change", "field", "message"), REFUSED)
def test_the_decoder_refuses_a_valued_shape_no_stream_takes_naming_the_field(
    change: Change, field: str, message: str
) -> None:
    ctj = ctj_from_json(changed(change))
    assert ctj.problem is not None
    assert (ctj.problem.field, message in ctj.problem.message) == (field, True)
    result = plan(ctj, [], OPENS, "gpufleet")
    (condition,) = result.status.conditions
    assert (result.status.phase, result.create) == ("Invalid", ())
    assert condition.type == SCHEDULE_VALID and field in condition.message


@pytest.mark.parametrize(("change", "field", "message"), REFUSED)
def test_the_same_shape_without_accuracy_is_a_plain_gang(
    change: Change, field: str, message: str
) -> None:
    ctj = ctj_from_json(changed(change, valued=False))
    assert ctj.problem is None
    pods = plan(ctj, [], OPENS, "gpufleet").create
    assert len(pods) == ctj.spec.min_replicas
    limits = {p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in pods}
    assert limits == {str(ctj.spec.gpu.count)}


@pytest.mark.parametrize(("low", "high"), [(3, 4), (1, 3), (5, 8), (2, 2), (9, 64)])
def test_bounds_are_refused_exactly_when_no_share_lies_between_them(low: int, high: int) -> None:
    accepted = ctj_from_json(changed(bounds(low, high))).problem is None
    assert accepted == any(low <= 2**k <= high for k in range(4)) == has_whole_share(low, high)


def test_gang_false_with_one_replica_is_served_and_grows_in_its_group() -> None:
    ctj = ctj_from_json(changed(lambda spec: spec.update(gang=False, replicas={"min": 1})))
    assert ctj.problem is None
    (pod,) = plan(ctj, [], OPENS, "gpufleet").create
    assert pod["metadata"]["labels"][POD_GROUP_LABEL] == "lower-w0"


def test_the_simulator_refuses_the_same_bounds_and_places_min_3_on_4_gpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_gpus 3 to max_gpus 3 must include 1, 2, 4 or 8"):
        replace(stream(3), max_gpus=3)
    with pytest.raises(ValueError, match="min_gpus to max_gpus must include 1, 2, 4 or 8"):
        generate_streams(ContinualSpec(streams=2, windows=1, min_gpus=3, max_gpus=3))
    path = tmp_path / "streams.csv"
    write_streams([stream(3)], path)  # min 3, max 4; then max 3 written by hand
    header, row = path.read_text().splitlines()
    columns = header.split(",")
    cells = row.split(",")
    cells[columns.index("max_gpus")] = "3"
    path.write_text(f"{header}\n{','.join(cells)}\n")
    with pytest.raises(ValueError, match=f"{path}:2.*min_gpus 3 to max_gpus 3 must include"):
        read_streams(path)
    node = NodeSpec("a", 32_000, 131_072, 4, "A100")
    run = ContinualRun([node], [stream(3)], make_policy("thief", {"realloc_s": ROUND_S}))
    run.run()
    (row,) = run.rows
    record = dict(zip(STREAM_COLUMNS, row, strict=True))
    assert (record["status"], record["replicas"]) == ("completed", 4)
    assert record["end_s"] == pytest.approx(2 + 200 / 3.24)


class FakeApi:
    """Answers the reconciler's writes: status PUTs echo the object, pod POSTs are made."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []

    async def request(
        self, method: str, path: str, *, body: Any = None, **_: Any
    ) -> tuple[int, Any]:
        if method == "PUT" and path.endswith("/status"):
            self.statuses[body["metadata"]["name"]] = body["status"]
            return 200, body
        if method == "POST" and path.endswith("/pods"):
            self.created.append(body["metadata"]["name"])
            return 201, body
        raise AssertionError(f"unexpected {method} {path}")


def first_config(openings: Sequence[WindowOpening]) -> list[WindowChoice]:
    return [WindowChoice(0) for _ in openings]


@pytest.mark.parametrize(("change", "field", "message"), REFUSED)
def test_the_reconciler_serves_a_healthy_ctj_opening_beside_a_refused_one(
    change: Change, field: str, message: str
) -> None:
    async def main() -> CtjReconciler:
        api = FakeApi()
        reconciler = CtjReconciler(api, clock=lambda: OPENS, plan_windows=first_config)  # type: ignore[arg-type]
        bad, good = changed(change, "bad"), ctj_json(name="good")
        reconciler.cache.replace(CTJS, [bad, good])
        await reconciler._reconcile_guarded("ns/good")
        await reconciler._reconcile_guarded("ns/bad")
        await reconciler.stop()
        for timer in reconciler._timers.values():
            timer.cancel()
        assert api.created == ["good-w0-0", "good-w0-1"]
        assert api.statuses["good"]["phase"] == "Retraining"
        assert api.statuses["bad"]["phase"] == "Invalid"
        assert api.statuses["bad"]["conditions"][0]["message"].startswith(f"{field}: ")
        return reconciler

    reconciler = asyncio.run(main())
    assert reconciler.quarantine.counts == {(KIND, field): 1}


def test_the_joint_config_choice_leaves_out_a_stream_it_cannot_build() -> None:
    """A CTJ read as valid whose stream still cannot be built (a shape the decoder
    missed) is left out of the instant's plan; its own reconcile reports it."""
    good = ctj_from_json(ctj_json(name="good"))
    read = ctj_from_json(ctj_json(name="odd"))
    odd = replace(read, spec=replace(read.spec, gpu=GpuRequest(count=2)))
    seen: list[list[str]] = []

    def planner(openings: Sequence[WindowOpening]) -> list[WindowChoice]:
        seen.append([o.stream.id for o in openings])
        return first_config(openings)

    joint = JointConfigs(planner, lambda: [good, odd], lambda key: [])
    assert len(plan(good, [], OPENS, "gpufleet", joint).create) == 2
    assert seen == [["ns/good"]]
    with pytest.raises(ValueError, match="request one GPU"):
        plan(odd, [], OPENS, "gpufleet", joint)


def window_pods(name: str, gang: int, most: int) -> list[dict[str, Any]]:
    """`gang` pods of a CTJ's window as created before its shape was refused: replica
    0 of a healthy CTJ's window, renamed, with the gang size and max-replicas written."""
    (first, _) = plan(ctj_from_json(ctj_json(name=name)), [], OPENS, "gpufleet").create
    pods = []
    for replica in range(gang):
        meta = dict(first["metadata"])
        notes = {**meta["annotations"], GANG_SIZE: str(gang), MAX_REPLICAS: str(most)}
        pod_name = f"{name}-w0-{replica}"
        meta.update(name=pod_name, uid=pod_name, annotations=notes)
        meta["creationTimestamp"] = first["metadata"].get("creationTimestamp", "")
        pods.append({**first, "metadata": meta, "status": {"phase": "Pending"}})
    return pods


def test_the_scheduler_sets_aside_a_window_without_a_share_and_places_the_other() -> None:
    bad = [pod_from_json(p) for p in window_pods("bad", 3, 3)]
    good = [pod_from_json(p) for p in window_pods("good", 2, 4)]
    workload = build_workload([*bad, *good], {}, WholeGpu())
    (rejected,) = workload.rejected
    assert sorted(p.name for p in rejected.pods) == ["bad-w0-0", "bad-w0-1", "bad-w0-2"]
    assert f"annotation {MAX_REPLICAS}: 3 to 3 GPUs hold none of 1, 2, 4 or 8" in str(
        rejected.problem
    )
    (pending,) = workload.pending
    assert pending.spec.elastic is not None and pending.spec.kind == "retrain"

    cache = ClusterCache(WholeGpu())
    cache.replace(NODES, [node_json("a", 2)])  # the healthy window's 2, none to grow
    policy = make_policy("thief", {"realloc_s": ROUND_S})
    pods = [*window_pods("bad", 3, 3), *window_pods("good", 2, 4)]
    effects = one_round(cache, pods, policy, OPENS + 1)
    assert sorted(name for name, _, _ in effects.binds) == ["good-w0-0", "good-w0-1"]
    reported = {name for name, message in effects.reports if MAX_REPLICAS in message}
    assert reported == {"bad-w0-0", "bad-w0-1", "bad-w0-2"}
