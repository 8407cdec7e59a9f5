"""Sessions go where there is room: the ingress's request router and its autoscaling policy.

A session is one long WebSocket request that holds one of its replica's
``max_sessions_per_replica`` slots for as long as it lives. Serve's default
router picks the less loaded of two random replicas, so with three or more
replicas a new session can land on a full one while another has room. Here:

- every ingress replica reports its slots in ``record_routing_stats``
  (:func:`slot_stats`: capacity, sessions, sockets still negotiating, whether it
  accepts), which the controller polls every ``request_routing_stats_period_s``
  and broadcasts to every proxy's router;
- :class:`SessionAwareRouter` ranks the replicas by free slots, minus the
  requests it sent each of them since that replica's last report (so a burst of
  new sessions spreads before the next report), and offers the full ones last:
  a request always reaches some replica, and only a replica that is itself
  full refuses, at once, with ``retry_after_s``. A replica that stopped
  accepting (draining) comes after every other;
- :class:`SessionAutoscalingPolicy` (fed by ``record_autoscaling_stats``:
  sessions and the sessions refused for want of room) asks for
  ``ceil((sessions + refused + spare_slots) / cap)`` replicas, so a new replica
  is starting while the others still have a slot free.

Serve pickles this module *by value* into the proxies and the controller (the
router class and the policy), so it imports nothing from the project: only the
standard library and Ray.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

logger = logging.getLogger("ray.serve")

#: Import paths serve_app.app hands to Serve.
ROUTER_CLASS = "serve_app.routing:SessionAwareRouter"
AUTOSCALING_POLICY = "serve_app.routing:SessionAutoscalingPolicy"
#: The session route, as it appears in the proxy's pickled request (scope path).
SESSION_PATH = b"/ws/session"
#: Keys of ``record_autoscaling_stats`` (numbers only, as Serve requires).
SESSIONS_METRIC = "mirage_sessions"
REFUSED_METRIC = "mirage_refused_recent"
#: Seconds a request this router sent counts against its replica's free slots when no newer
#: report arrived (a report normally comes every ``request_routing_stats_period_s``).
DEFAULT_MARK_TTL_S = 5.0

T = TypeVar("T")


def slot_stats(capacity: int, sessions: int, negotiating: int, accepting: bool, refused_total: int) -> dict[str, Any]:
    """What one ingress replica tells the routers about its slots (``record_routing_stats``)."""
    taken = sessions + negotiating
    return {
        "capacity": capacity,
        "sessions": sessions,
        "negotiating": negotiating,
        "accepting": accepting,
        "free_slots": max(0, capacity - taken) if accepting else 0,
        "refused_total": refused_total,
        "at": time.time(),
    }


@dataclass(frozen=True)
class Room:
    """A replica as the router sees it: free slots after its report and our own recent sends."""

    free: float  # math.inf: no report yet (a new replica is empty)
    accepting: bool


def room_of(stats: Mapping[str, Any] | None, recent_sends: int) -> Room:
    """Free slots from a replica's last report, less what we sent it since."""
    if not stats or "free_slots" not in stats:
        return Room(free=math.inf, accepting=True)
    accepting = bool(stats.get("accepting", True))
    free = float(stats.get("free_slots", 0)) - recent_sends
    return Room(free=max(0.0, free), accepting=accepting)


def rank_by_room(entries: Sequence[tuple[T, Room]]) -> list[list[T]]:
    """Replicas in ranks, best first: most free slots, then fewer, then full, then not accepting.

    Every replica appears in some rank, so a request always reaches one; the replica's own
    cap decides whether a session is refused. Ties stay in one rank (Serve picks the one with
    the shortest queue among them).
    """
    with_room: dict[float, list[T]] = {}
    full: list[T] = []
    closed: list[T] = []
    for item, room in entries:
        if not room.accepting:
            closed.append(item)
        elif room.free > 0:
            with_room.setdefault(room.free, []).append(item)
        else:
            full.append(item)
    ranks = [with_room[free] for free in sorted(with_room, reverse=True)]
    return [rank for rank in (*ranks, full, closed) if rank]


def is_session_request(pending: PendingRequest | None) -> bool:
    """A new ``/ws/session`` request (the proxy's pickled ASGI scope names its path)."""
    if pending is None or not pending.args:
        return False
    arg = pending.args[0]
    return isinstance(arg, (bytes, bytearray)) and SESSION_PATH in arg


class SessionAwareRouter(FIFOMixin, RequestRouter):
    """Routes each request to the ingress replica with the most free session slots."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._mark_ttl_s = float(kwargs.get("mark_ttl_s", DEFAULT_MARK_TTL_S))
        #: replica id -> times (our clock) we sent it a request since its last report.
        self._sent: dict[str, list[float]] = {}
        self._report_at: dict[str, float] = {}
        self.decisions: dict[str, int] = {"room": 0, "all_full": 0}
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._counter: Any = None
        try:
            from ray.util import metrics

            self._counter = metrics.Counter(
                "mirage_routing_decisions",
                description="New sessions routed by the ingress router: to a replica with room, or all full.",
                tag_keys=("outcome",),
            )
        except Exception:  # noqa: BLE001 - metrics are optional, routing is not
            self._counter = None

    # The base class calls initialize_state only when kwargs are configured: be safe either way.
    def _ensure_state(self) -> None:
        if not hasattr(self, "_sent"):
            self.initialize_state()

    def _recent_sends(self, replica: RunningReplica, now: float) -> int:
        key = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        reported = stats.get("at")
        marks = self._sent.get(key)
        if not marks:
            return 0
        horizon = now - self._mark_ttl_s
        if isinstance(reported, (int, float)) and self._report_at.get(key) != reported:
            # A new report counts what reached the replica before it was taken (clocks of one
            # cluster agree to well under this margin).
            self._report_at[key] = float(reported)
            horizon = max(horizon, float(reported) - 0.25)
        kept = [t for t in marks if t >= horizon]
        self._sent[key] = kept
        return len(kept)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._ensure_state()
        now = time.time()
        entries = [(r, room_of(r.routing_stats, self._recent_sends(r, now))) for r in candidate_replicas]
        ranks = rank_by_room(entries)
        if pending_request is not None:
            # Every replica is in the ranks already: when none can take the request, wait
            # (Serve's back-off) before asking again instead of spinning.
            pending_request.routing_context.should_backoff = True
        if is_session_request(pending_request):
            assert pending_request is not None
            request_id = pending_request.metadata.internal_request_id
            if request_id not in self._counted:
                self._counted[request_id] = None
                while len(self._counted) > 1024:
                    self._counted.popitem(last=False)
                outcome = "room" if any(room.accepting and room.free > 0 for _, room in entries) else "all_full"
                self.decisions[outcome] = self.decisions.get(outcome, 0) + 1
                if self._counter is not None:
                    try:
                        self._counter.inc(tags={"outcome": outcome})
                    except Exception:  # noqa: BLE001
                        pass
        return ranks

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._ensure_state()
        self._sent.setdefault(replica_id.unique_id, []).append(time.time())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._ensure_state()
        self._sent.pop(replica_id.unique_id, None)
        self._report_at.pop(replica_id.unique_id, None)


def _metric_total(metrics: Mapping[str, Mapping[Any, float]] | None, key: str) -> float | None:
    if not metrics or key not in metrics:
        return None
    values = metrics[key]
    return float(sum(values.values())) if values else 0.0


def desired_replicas(sessions: float, refused: float, capacity: int, spare_slots: int) -> int:
    """Replicas for ``sessions`` open sessions, ``refused`` turned away, and ``spare_slots`` kept free."""
    demand = max(0.0, sessions) + max(0.0, refused) + max(0, spare_slots)
    return max(1, math.ceil(demand / max(1, capacity) - 1e-9))


class SessionAutoscalingPolicy:
    """Serve autoscaling policy for the ingress: replicas follow sessions, with slots to spare.

    ``spare_slots`` free slots are kept across the replicas (2 by default: the next
    session's and one more), so a replica is starting before the last slot of the others
    is taken. Without reports yet (a replica just started), Serve's count of ongoing
    requests stands in for sessions. Serve applies min/max replicas and the up/down delays.
    """

    def __init__(self, max_sessions_per_replica: int = 4, spare_slots: int = 2) -> None:
        self.capacity = max(1, int(max_sessions_per_replica))
        self.spare_slots = max(0, int(spare_slots))

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics
        sessions = _metric_total(metrics, SESSIONS_METRIC)
        refused = _metric_total(metrics, REFUSED_METRIC) or 0.0
        if sessions is None:
            sessions = float(ctx.total_num_requests)
        desired = desired_replicas(sessions, refused, self.capacity, self.spare_slots)
        return desired, {"sessions": sessions, "refused": refused, "desired": desired}


class RecentCount:
    """How much a running total grew over the last ``window_s`` seconds (refusals for the autoscaler)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: list[tuple[float, int]] = []

    def observe(self, total: int, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        horizon = now - self.window_s
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.pop(0)
        return max(0, total - self._samples[0][1])
