"""The ingress's session routing and autoscaling rules (serve_app.routing), without Ray running."""

from __future__ import annotations

import asyncio
import math
import pickle
from types import SimpleNamespace

from serve_app.routing import (
    REFUSED_METRIC,
    SESSIONS_METRIC,
    RecentCount,
    Room,
    SessionAutoscalingPolicy,
    desired_replicas,
    is_session_request,
    rank_by_room,
    room_of,
    slot_stats,
)


def test_slot_stats_count_negotiating_sockets_and_close_when_not_accepting() -> None:
    stats = slot_stats(capacity=4, sessions=2, negotiating=1, accepting=True, refused_total=3)
    assert stats["free_slots"] == 1 and stats["sessions"] == 2 and stats["refused_total"] == 3
    assert slot_stats(4, 0, 0, accepting=False, refused_total=0)["free_slots"] == 0
    assert slot_stats(2, 2, 3, accepting=True, refused_total=0)["free_slots"] == 0


def test_room_subtracts_recent_sends_and_unknown_replicas_count_as_empty() -> None:
    assert room_of({"free_slots": 3, "accepting": True}, recent_sends=2) == Room(1.0, True)
    assert room_of({"free_slots": 1, "accepting": True}, recent_sends=4) == Room(0.0, True)
    assert room_of({}, 0).free == math.inf
    assert room_of(None, 5).free == math.inf
    assert not room_of({"free_slots": 2, "accepting": False}, 0).accepting


def test_ranks_put_most_room_first_full_then_draining_last() -> None:
    ranks = rank_by_room([
        ("a", Room(1, True)), ("b", Room(2, True)), ("full", Room(0, True)),
        ("draining", Room(3, False)), ("c", Room(2, True)), ("new", Room(math.inf, True)),
    ])
    assert ranks == [["new"], ["b", "c"], ["a"], ["full"], ["draining"]]


def test_a_full_cluster_still_routes_so_the_replica_refuses_with_its_hint() -> None:
    assert rank_by_room([("a", Room(0, True)), ("b", Room(0, True))]) == [["a", "b"]]
    assert rank_by_room([]) == []


def test_session_requests_are_recognised_from_the_pickled_scope() -> None:
    scope = {"type": "websocket", "path": "/ws/session", "headers": []}
    ws = SimpleNamespace(args=[pickle.dumps(scope)])
    health = SimpleNamespace(args=[pickle.dumps({"type": "http", "path": "/health"})])
    assert is_session_request(ws)  # type: ignore[arg-type]
    assert not is_session_request(health)  # type: ignore[arg-type]
    assert not is_session_request(None)
    assert not is_session_request(SimpleNamespace(args=[]))  # type: ignore[arg-type]


def test_desired_replicas_keep_spare_slots_so_a_replica_starts_before_the_last_slot_is_taken() -> None:
    # cap 4, 2 spare: one replica up to 2 sessions; the third (one slot left) asks for a second.
    assert [desired_replicas(n, 0, 4, 2) for n in range(0, 8)] == [1, 1, 1, 2, 2, 2, 2, 3]
    # cap 2 (the tests): the first session already asks for a second replica.
    assert [desired_replicas(n, 0, 2, 2) for n in range(0, 5)] == [1, 2, 2, 3, 3]
    # refusals are demand too
    assert desired_replicas(2, 2, 2, 0) == 2


def _ctx(metrics: dict[str, dict[str, float]] | None, total: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(aggregated_metrics=metrics, total_num_requests=total)


def test_policy_sums_sessions_over_replicas_and_falls_back_to_ongoing_requests() -> None:
    policy = SessionAutoscalingPolicy(max_sessions_per_replica=2, spare_slots=1)
    desired, state = policy(_ctx({SESSIONS_METRIC: {"r1": 2.0, "r2": 1.0}, REFUSED_METRIC: {"r1": 0.0}}))
    assert desired == 2 and state["sessions"] == 3.0
    desired, _ = policy(_ctx({SESSIONS_METRIC: {"r1": 2.0, "r2": 2.0}, REFUSED_METRIC: {"r1": 2.0}}))
    assert desired == 4  # Serve clamps this to max_replicas
    desired, state = policy(_ctx(None, total=3.0))
    assert desired == 2 and state["sessions"] == 3.0
    desired, _ = policy(_ctx({SESSIONS_METRIC: {}}))
    assert desired == 1


def test_recent_count_is_the_growth_over_the_window() -> None:
    recent = RecentCount(window_s=5.0)
    assert recent.observe(0, now=0.0) == 0
    assert recent.observe(2, now=1.0) == 2
    assert recent.observe(3, now=4.0) == 3
    assert recent.observe(3, now=7.0) == 1  # the sample at t=1 (2) is the oldest within 5 s
    assert recent.observe(3, now=20.0) == 0


class _Replica:
    """What SessionAwareRouter reads of a RunningReplica: its id and its last routing stats."""

    def __init__(self, name: str, free: int, at: float) -> None:
        self.replica_id = SimpleNamespace(unique_id=name)
        self.routing_stats: dict[str, object] = {"free_slots": free, "accepting": True, "at": at}


def _router() -> object:
    from serve_app.routing import SessionAwareRouter

    router = SessionAwareRouter.__new__(SessionAwareRouter)  # no Serve around: only the routing state
    router._use_replica_queue_len_cache = False  # type: ignore[attr-defined]
    router.initialize_state(mark_ttl_s=5.0)
    return router


def _session(request_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        args=[pickle.dumps({"type": "websocket", "path": "/ws/session"})],
        metadata=SimpleNamespace(internal_request_id=request_id),
        routing_context=SimpleNamespace(should_backoff=False),
    )


def test_with_three_replicas_a_session_goes_to_room_never_to_the_full_one_first() -> None:
    import time

    router = _router()
    now = time.time()
    full, some, most = _Replica("full", 0, now), _Replica("some", 1, now), _Replica("most", 2, now)
    pending = _session("r1")
    ranks = asyncio.run(router.choose_replicas([full, some, most], pending))  # type: ignore[attr-defined]
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == [["most"], ["some"], ["full"]]
    assert pending.routing_context.should_backoff  # no busy loop when nobody can take it
    assert router.decisions == {"room": 1, "all_full": 0}  # type: ignore[attr-defined]

    # Two sessions sent to "most" before its next report: it now looks full, "some" comes first.
    router.on_send_request(most.replica_id)  # type: ignore[attr-defined]
    router.on_send_request(most.replica_id)  # type: ignore[attr-defined]
    ranks = asyncio.run(router.choose_replicas([full, some, most], _session("r2")))  # type: ignore[attr-defined]
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == [["some"], ["full", "most"]]

    # A newer report from "most" (taken after those sends reached it) replaces our marks.
    most.routing_stats = {"free_slots": 1, "accepting": True, "at": time.time() + 1.0}
    ranks = asyncio.run(router.choose_replicas([full, some, most], _session("r3")))  # type: ignore[attr-defined]
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == [["some", "most"], ["full"]]


def test_all_full_is_counted_once_per_request() -> None:
    import time

    router = _router()
    replicas = [_Replica("a", 0, time.time()), _Replica("b", 0, time.time())]
    pending = _session("same")
    for _ in range(3):  # Serve asks again after each back-off
        asyncio.run(router.choose_replicas(replicas, pending))  # type: ignore[attr-defined]
    assert router.decisions == {"room": 0, "all_full": 1}  # type: ignore[attr-defined]
