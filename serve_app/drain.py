"""Noticing that Serve is draining this replica, so open sessions can close cleanly.

When Serve stops a replica (scale-down, redeploy, ``serve shutdown``) it waits
for the replica's ongoing requests — our sessions, which may last an hour — up
to ``graceful_shutdown_timeout_s``, then kills it; the user's ``__del__`` only
runs after that wait. Ray 2.60 offers no public "you are draining" hook, so the
ingress asks the controller, while it holds sessions, for this replica's state
(the same data ``serve status -v`` and the dashboard show). When the replica
is STOPPING (or its application is being deleted) every session is ended with
a "server_shutdown" event and WebSocket close 1001, and the peer connection is
closed: clients reconnect elsewhere instead of seeing a dead call.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mirage.loop_task import LoopTask

logger = logging.getLogger(__name__)

STOPPING_STATES = {"STOPPING", "STOPPED"}


@dataclass(frozen=True)
class ReplicaIdentity:
    app_name: str | None
    actor_id: str | None
    replica_id: str | None
    pid: int


def _whoami() -> ReplicaIdentity:
    import ray
    from ray import serve

    app_name = actor_id = replica_id = None
    try:
        actor_id = ray.get_runtime_context().get_actor_id()
    except Exception:  # noqa: BLE001
        pass
    try:
        ctx = serve.get_replica_context()
        app_name = ctx.app_name
        replica_id = ctx.replica_id.unique_id
    except Exception:  # noqa: BLE001
        pass
    return ReplicaIdentity(app_name=app_name, actor_id=actor_id, replica_id=replica_id, pid=os.getpid())


def replica_state(details: dict[str, Any], me: ReplicaIdentity) -> str:
    """This replica as Serve's instance details show it: "running", "stopping" or "missing".

    Measured on Ray 2.60: while an application is being deleted its status is
    DELETING and its deployments are no longer listed; a replica being stopped
    disappears from its deployment's list while it still drains. So "missing"
    for a replica that is alive and serving sessions means it is draining.
    """
    apps = details.get("applications") or {}
    candidates = [apps[me.app_name]] if me.app_name in apps else ([] if me.app_name else list(apps.values()))
    if not candidates:
        return "missing"
    for app in candidates:
        if str(getattr(app.get("status"), "value", app.get("status"))) == "DELETING":
            return "stopping"
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                mine = (
                    (me.actor_id and replica.get("actor_id") == me.actor_id)
                    or (me.replica_id and replica.get("replica_id") == me.replica_id)
                    or replica.get("pid") == me.pid
                )
                if mine:
                    state = str(getattr(replica.get("state"), "value", replica.get("state")))
                    return "stopping" if state in STOPPING_STATES else "running"
    return "missing"


class DrainWatcher:
    """Polls the controller while ``active()`` is true; calls ``on_drain`` once when draining starts."""

    def __init__(self, active: Callable[[], bool], on_drain: Callable[[], None], interval_s: float = 1.0) -> None:
        self._active = active
        self._on_drain = on_drain
        self._interval_s = interval_s
        self._task = LoopTask(self._run)
        self.drained = False

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _details(self) -> dict[str, Any]:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            raise RuntimeError("Serve is not running in this process")
        return await client._controller.get_serve_instance_details.remote()  # type: ignore[no-any-return]

    async def _run(self) -> None:
        me = _whoami()
        missing = 0
        while not self.drained:
            await asyncio.sleep(self._interval_s)
            if not self._active():
                continue
            try:
                details = await asyncio.wait_for(self._details(), 10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an internal API change must not hurt sessions
                logger.warning("drain watcher disabled: cannot read Serve's state (%s)", type(exc).__name__)
                return
            state = replica_state(details, me)
            if state == "running":
                missing = 0
                continue
            missing = missing + 1 if state == "missing" else missing
            # "missing" twice in a row: not a passing glitch of the controller's view.
            if state == "stopping" or missing >= 2:
                logger.info("Serve is draining this replica: ending its sessions cleanly")
                self.drained = True
                self._on_drain()
