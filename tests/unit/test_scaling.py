"""Scaling events from Serve's instance details (serve_app.scaling), without Ray running."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.scaling import ScalingLog, ScalingWatcher, changes, deployment_counts


def _details(ingress_states: list[str], target: int, app: str = "mirage") -> dict[str, Any]:
    return {
        "applications": {
            app: {
                "status": "RUNNING",
                "deployments": {
                    "MirageIngress": {"target_num_replicas": target, "replicas": [{"state": s} for s in ingress_states]},
                    "FaceDetector": {"target_num_replicas": 1, "replicas": [{"state": "RUNNING"}]},
                },
            },
            "other": {"deployments": {"X": {"target_num_replicas": 9, "replicas": []}}},
        }
    }


def test_counts_per_deployment_of_this_application() -> None:
    counts = deployment_counts(_details(["RUNNING", "STARTING", "STOPPING"], 2), "mirage")
    assert counts["MirageIngress"] == {"running": 1, "starting": 1, "stopping": 1, "target": 2}
    assert counts["FaceDetector"]["running"] == 1 and "X" not in counts
    assert deployment_counts({}, "mirage") == {}
    assert deployment_counts(_details([], 1), "missing") == {}


def test_changes_are_events_with_a_direction() -> None:
    before = deployment_counts(_details(["RUNNING"], 1), "mirage")
    after = deployment_counts(_details(["RUNNING", "STARTING"], 2), "mirage")
    events = changes(before, after, now=10.0)
    assert events == [{"at": 10.0, "deployment": "MirageIngress", "kind": "target", "from": 1, "to": 2, "direction": "up"}]
    back = changes(after, before, now=20.0)
    assert [e["direction"] for e in back] == ["down"]


def test_log_keeps_recent_events_and_the_first_view_is_no_event() -> None:
    log = ScalingLog(keep=2)
    assert log.update(deployment_counts(_details(["RUNNING"], 1), "mirage"), 1.0) == []
    for i, target in enumerate((2, 1, 2), start=2):
        log.update(deployment_counts(_details(["RUNNING"], target), "mirage"), float(i))
    report = log.report()
    assert len(report["events"]) == 2 and report["events"][-1]["to"] == 2 and report["updated_at"] == 4.0


def test_watcher_polls_the_given_details() -> None:
    views = iter([_details(["RUNNING"], 1), _details(["RUNNING", "RUNNING"], 2)])

    async def details() -> dict[str, Any]:
        return next(views)

    async def run() -> list[dict[str, Any]]:
        watcher = ScalingWatcher(details=details, app_name="mirage")
        await watcher.poll_once()
        return await watcher.poll_once()

    events = asyncio.run(run())
    assert {(e["kind"], e["direction"]) for e in events} == {("target", "up"), ("running", "up")}
