"""`kubectl get ctj` as the API server serves it: the Table that kubectl prints cell by
cell (a missing cell prints blank), for jobs before their first window, retraining,
retrained and missed, with the controller run as deployed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fleet import Admin
from controller.kube.objects import parse_time
from controller.scheduling.effects import now_rfc3339
from tests.kube.ctj_helpers import (
    CTJS,
    CtjEnvironment,
    create_ctj,
    ctj_env,  # noqa: F401 - fixture
    ctj_manifest,
    get_ctj,
    run,
    serving,
)
from tests.kube.helpers import eventually
from tests.kube.test_ctj_lifecycle import NODES

pytestmark = pytest.mark.kube

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
COLUMNS = ["Name", "Phase", "Window", "Deadline", "Completed", "Missed", "Last-Retrain", "Age"]
# Ten-minute windows, so each job holds still while the table is read.
LONG = {"window_s": 600, "deadline_s": 300}


async def table(admin: Admin) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    async with admin.api.session.get(CTJS, headers={"Accept": TABLE}) as response:
        assert response.status == 200
        served = await response.json()
    rows = {r["cells"][0]: r["cells"] for r in served["rows"]}
    return served["columnDefinitions"], rows


def test_kubectl_get_ctj_prints_deadlines_and_blank_counts(
    ctj_env: CtjEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def scenario(admin: Admin) -> None:
        await admin.create_nodes(NODES)
        later = ctj_manifest("later")
        later["spec"]["retrain"]["startTime"] = now_rfc3339(time.time() + 3600)
        async with serving(ctj_env, tmp_path / "serve.log") as serve:
            await create_ctj(admin.api, later)
            await create_ctj(admin.api, ctj_manifest("busy", runtime="600s", **LONG))
            await create_ctj(admin.api, ctj_manifest("done", runtime="1s", **LONG))
            await create_ctj(
                admin.api, ctj_manifest("starved", window_s=600, deadline_s=2, gpu_models=("H100",))
            )

            async def settled() -> bool:
                phases = [
                    ((await get_ctj(admin.api, n)) or {}).get("status", {})
                    for n in ("later", "busy", "done", "starved")
                ]
                return [s.get("phase") for s in phases] == [
                    "Pending",
                    "Retraining",
                    "Waiting",
                    "Waiting",
                ] and all(s.get("placements") for s in phases[1:3])

            await eventually(settled, timeout_s=30, what="the four CTJs in their phases")
            columns, rows = await table(admin)
            assert serve.stop() == 0
        assert [c["name"] for c in columns] == COLUMNS
        assert columns[COLUMNS.index("Deadline")]["type"] == "string"
        await check_rows(admin, rows)

    run(ctj_env, scenario)


async def check_rows(admin: Admin, rows: dict[str, list[Any]]) -> None:
    now = time.time()

    def cells(name: str) -> dict[str, Any]:
        return dict(zip(COLUMNS, rows[name], strict=True))

    later = cells("later")
    assert [later[c] for c in COLUMNS[1:7]] == ["Pending", None, None, None, None, None]
    for name in ("busy", "done", "starved"):
        status = ((await get_ctj(admin.api, name)) or {})["status"]
        row = cells(name)
        # The deadline prints as the absolute time it is, past or future.
        assert row["Deadline"] == status["currentWindow"]["deadline"]
        assert row["Window"] == 0
    assert now < parse_time(cells("busy")["Deadline"]) <= now + 300
    assert parse_time(cells("starved")["Deadline"]) < now
    busy, done, starved = cells("busy"), cells("done"), cells("starved")
    assert [busy[c] for c in ("Phase", "Completed", "Missed", "Last-Retrain")] == [
        "Retraining",
        None,
        None,
        None,
    ]
    assert [done[c] for c in ("Phase", "Completed", "Missed")] == ["Waiting", 1, 0]
    assert done["Last-Retrain"].endswith("s") and done["Last-Retrain"][:-1].isdigit()
    assert [starved[c] for c in ("Phase", "Completed", "Missed", "Last-Retrain")] == [
        "Waiting",
        0,
        1,
        None,
    ]
    assert all(cell != "<invalid>" for row in rows.values() for cell in row)
