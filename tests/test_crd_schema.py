"""The CRD's structural schema (fast tier): the example validates, what the reconciler
writes as status validates, printer columns point at real fields, and the example
parses into the value objects the reconciler uses. The CEL rules are enforced only by
a real API server: tests/kube/test_ctj_manifests.py checks them there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from controller.ctj.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION, ctj_from_json
from controller.ctj.plan import plan
from policies.continual import AccuracyCurve, DriftTrigger, RetrainConfig

ROOT = Path(__file__).parents[1]
CRD = ROOT / "deploy" / "crd" / "continualtrainingjobs.yaml"
EXAMPLE = ROOT / "examples" / "continualtrainingjob.yaml"


def crd() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD.read_text()))


def schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def validate(obj: dict[str, Any], subschema: dict[str, Any] | None = None) -> None:
    # Kubernetes schemas are OpenAPI v3.0: boolean exclusiveMinimum, as in draft 4.
    jsonschema.Draft4Validator(subschema or schema()).validate(obj)


def test_crd_names_match_the_code() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert doc["spec"]["names"]["kind"] == KIND
    (version,) = doc["spec"]["versions"]
    assert version["name"] == VERSION and version["subresources"] == {"status": {}}
    assert example()["apiVersion"] == API_VERSION


def test_example_validates_and_parses() -> None:
    obj = example()
    validate(obj)
    job = ctj_from_json({**obj, "metadata": {**obj["metadata"], "uid": "u"}})
    spec = job.spec
    assert (spec.retrain.window_s, spec.retrain.deadline_s) == (600, 480)
    assert (spec.min_replicas, spec.max_replicas, spec.gang) == (2, 4, True)
    assert spec.gpu_types == {"A100": 1.0, "V100": 0.5}
    assert spec.configs[0] == RetrainConfig("last-layers", 600.0, 0.7)
    assert spec.accuracy == AccuracyCurve(0.92, 0.55, 0.4, 900.0)
    assert spec.initial_accuracy == 0.85


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("spec", "image"), None, "'image' is a required property"),
        (("spec", "retrain", "deadlineSeconds"), "soon", "'soon' is not of type 'integer'"),
        (("spec", "resources", "gpu", "count"), 0, "0 is less than the minimum of 1"),
        (("spec", "resources", "gpu", "milli"), 1500, "1500 is greater than the maximum of 1000"),
        (("spec", "tolerations"), [{"operator": "Maybe"}], "'Maybe' is not one of"),
        (("spec", "resources", "cpu"), "lots", "'lots' does not match"),
        (("spec", "inference"), {"milliGpu": 1500}, "1500 is greater than the maximum of 1000"),
        (("spec", "inference"), {"gamma": 0.5}, "'milliGpu' is a required property"),
        (("spec", "inference"), {"milliGpu": 500, "gamma": 0}, "0 is less than or equal to"),
    ],
)
def test_structural_schema_rejects_malformed_fields(
    path: tuple[str, ...], value: Any, message: str
) -> None:
    obj = example()
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=f"^{message}"):
        validate(obj)


def test_status_the_reconciler_writes_fits_the_schema() -> None:
    obj = example()
    obj["metadata"].update(uid="u", creationTimestamp="2026-01-01T00:00:00Z", generation=1)
    job = ctj_from_json(obj)
    status = plan(job, [], job.created + 1, "gpufleet").status.to_json()
    validate(status, schema()["properties"]["status"])
    assert status["phase"] == "Retraining" and status["currentWindow"]["index"] == 0


def test_a_drift_trigger_and_observed_accuracy_validate_and_parse() -> None:
    obj = example()
    obj["spec"]["retrain"]["trigger"] = {"drop": 0.05, "minGapSeconds": 300}
    obj["status"] = {"observedAccuracy": {"value": 0.71, "time": "2026-01-01T00:10:00.5Z"}}
    validate(obj)
    obj["metadata"].update(uid="u", creationTimestamp="2026-01-01T00:00:00Z")
    job = ctj_from_json(obj)
    assert job.spec.retrain.trigger == DriftTrigger(below=0.0, drop=0.05, min_gap_s=300)
    assert job.status.observed is not None and job.status.observed.value == 0.71
    # The status the reconciler writes back keeps the observation and adds its model.
    status = plan(job, [], job.created + 1, "gpufleet").status.to_json()
    validate(status, schema()["properties"]["status"])
    assert status["observedAccuracy"]["value"] == 0.71 and "model" in status


def test_an_inference_share_validates_and_parses() -> None:
    obj = example()
    obj["spec"]["inference"] = {"milliGpu": 250, "gamma": 0.3}
    validate(obj)
    job = ctj_from_json({**obj, "metadata": {**obj["metadata"], "uid": "u"}})
    assert (job.spec.inference_milli, job.spec.inference_gamma) == (250, 0.3)


def test_an_unreadable_observed_accuracy_is_named() -> None:
    obj = example()
    obj["status"] = {"observedAccuracy": {"value": "high", "time": "2026-01-01T00:10:00Z"}}
    with pytest.raises(jsonschema.ValidationError, match="'high' is not of type 'number'"):
        validate(obj)
    job = ctj_from_json({**obj, "metadata": {**obj["metadata"], "uid": "u"}})
    assert job.problem is not None and job.problem.field == "status.observedAccuracy"


def with_schedule(schedule: str) -> dict[str, Any]:
    obj = example()
    retrain = obj["spec"]["retrain"]
    del retrain["windowSeconds"]
    retrain.update(schedule=schedule, deadlineSeconds=5)
    return obj


@pytest.mark.parametrize(
    "schedule", ["*/5 * * * *", "3,9,17-21/2 * * * * *", "@hourly", " 0 0 1 1 * "]
)
def test_a_schedule_of_5_or_6_fields_or_a_macro_validates_and_parses(schedule: str) -> None:
    obj = with_schedule(schedule)
    validate(obj)
    job = ctj_from_json({**obj, "metadata": {**obj["metadata"], "uid": "u"}})
    assert job.problem is None and job.spec.retrain.cron == schedule


@pytest.mark.parametrize("schedule", ["* * * *", "1 2 3 4 5 6 7", "every hour", "0 0 * * MON"])
def test_the_schema_refuses_a_schedule_of_other_shapes(schedule: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        validate(with_schedule(schedule))


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("3,9,61 * * * * *", "cron second field '3,9,61': values must lie in 0-59"),
        ("*/0 * * * * *", "cron second field '*/0': values must lie in 0-59"),
        ("0 0 24 * * *", "cron hour field '24': values must lie in 0-23"),
        ("0 0 1 13 *", "cron month field '13': values must lie in 1-12"),
    ],
)
def test_the_decoder_names_a_schedule_value_out_of_range(schedule: str, message: str) -> None:
    """Values the schema's pattern lets through are checked where the CTJ is decoded:
    the CTJ is set aside with the field and the value named."""
    obj = with_schedule(schedule)
    validate(obj)
    job = ctj_from_json({**obj, "metadata": {**obj["metadata"], "uid": "u"}})
    assert job.problem is not None
    assert (job.problem.field, job.problem.message) == ("spec.retrain.schedule", message)


def test_printer_columns_point_at_schema_fields() -> None:
    (version,) = crd()["spec"]["versions"]
    root = schema()
    for column in version["additionalPrinterColumns"]:
        node = root
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]
        kind = {"integer": "integer", "string": "string", "date": "string"}[column["type"]]
        assert node["type"] == kind, column
