"""The carbon gate as a source of the operator's status loop: which jobs it reads, that it runs before the other
sources of a pass, and that two sources changing `conditions` in one pass both land in the one status write."""

from __future__ import annotations

import asyncio
from typing import Any

from moeops.operator.config import OperatorConfig
from moeops.operator.grid_intensity import GridIntensity
from moeops.operator.handlers.carbon_gate import gate_fields, gated
from moeops.operator.handlers.status_loop import SOURCES, TRAINING, refresh_status
from moeops.operator.handlers.status_sources import Context
from moeops.operator.status import StatusUpdate

SPEC = {
    "model": {"preset": "moe-debug"},
    "data": {"source": "synthetic://x"},
    "training": {"steps": 10},
    "workers": {"replicas": 2},
}
PAUSED = {"conditions": [{"type": "CarbonPaused", "status": "True", "reason": "GridAboveThreshold"}]}


def job(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"namespace": "ml", "name": "j", "uid": "u1", "resourceVersion": "7", "generation": 1}
    return {"apiVersion": "moeops.dev/v1alpha1", "kind": "MoETrainingJob", "metadata": meta, "spec": spec,
            "status": status or {"state": "Running"}}  # fmt: skip


class RecordingKube:
    """Records status patches and events (no control plane: the loop's merge is what is tested here; the gate's
    writes on a real API server are in tests/e2e/test_carbon_aware.py)."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[str] = []

    def patch_custom_status(self, _plural: str, _ns: str, _name: str, patch: dict[str, Any], _rv: str) -> None:
        self.patches.append(patch)

    def post_event(self, _body: Any, _type: str, reason: str, _message: str, **_: Any) -> None:
        self.events.append(reason)


def test_the_gate_reads_jobs_with_a_threshold_and_those_it_still_holds() -> None:
    assert gated({"carbon": {"maxIntensity": 300}}, {})
    assert gated({}, PAUSED)  # the threshold was removed: the gate must release the job
    assert not gated({"carbon": {"region": "DE"}}, {})
    assert not gated({}, {"conditions": [{"type": "CarbonPaused", "status": "False"}]})


def test_an_ungated_job_costs_the_gate_nothing() -> None:
    ctx = Context(None, kube=None, cfg=None, grid=GridIntensity(""))  # type: ignore[arg-type]
    assert asyncio.run(gate_fields(ctx, job(SPEC))) is None  # no kube, no grid read: it would raise


def test_a_gate_that_cannot_see_the_region_says_why_and_touches_no_child() -> None:
    ctx = Context(None, kube=None, cfg=OperatorConfig(), grid=GridIntensity(""))  # type: ignore[arg-type]
    spec = {**SPEC, "carbon": {"region": "nowhere-land", "maxIntensity": 300}}
    update = asyncio.run(gate_fields(ctx, job(spec)))
    assert update is not None
    conditions = {c["type"]: (c["status"], c["reason"]) for c in update.patch["conditions"]}
    assert conditions["CarbonGateActive"] == ("False", "UnknownRegion")
    assert conditions["CarbonPaused"][0] == "False"
    assert [e.reason for e in update.events] == ["CarbonGateInactive"]


def test_the_gate_runs_first_among_a_training_jobs_sources() -> None:
    assert next(name for name, kinds in SOURCES.items() if TRAINING in kinds) == "carbon_gate"


def test_two_sources_changing_conditions_in_one_pass_both_land_fake_kube() -> None:
    async def gate(_ctx: Context, body: Any) -> StatusUpdate:
        conditions = [*body["status"].get("conditions", []), {"type": "CarbonPaused", "status": "True"}]
        return StatusUpdate({"conditions": conditions, "state": "Suspended"}, [])

    async def blocked(_ctx: Context, body: Any) -> StatusUpdate:
        assert body["status"]["state"] == "Suspended"  # it sees what the gate left
        conditions = [*body["status"]["conditions"], {"type": "WorkersBlocked", "status": "False"}]
        return StatusUpdate({"conditions": conditions}, [])

    kube = RecordingKube()
    ctx = Context(None, kube=kube, cfg=OperatorConfig())  # type: ignore[arg-type]
    asyncio.run(refresh_status(ctx=ctx, plural=TRAINING, body=job(SPEC), sources=[gate, blocked]))
    assert len(kube.patches) == 1
    assert [c["type"] for c in kube.patches[0]["conditions"]] == ["CarbonPaused", "WorkersBlocked"]
    assert kube.patches[0]["state"] == "Suspended"
