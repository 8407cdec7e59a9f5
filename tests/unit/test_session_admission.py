"""serve_app.sessions: unauthenticated sockets have their own budget; refusals carry a retry hint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serve_app.control import error_message
from serve_app.sessions import SessionRegistry, _close_reason, _send_error


def test_pending_budget_is_separate_from_the_session_slots() -> None:
    registry = SessionRegistry(capacity=2, max_pending=3)
    assert all(registry.enter_pending() for _ in range(3))
    assert registry.enter_pending() is False and registry.total_pending_refused == 1
    # Pending sockets hold no slot: both sessions can still be reserved.
    assert registry.reserve() is not None and registry.reserve() is not None
    assert registry.reserve() is None
    for _ in range(3):
        registry.leave_pending()
    registry.leave_pending()  # never below zero
    assert registry.pending == 0 and registry.enter_pending()


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def test_refusals_carry_retry_after_in_the_message_and_the_close_reason() -> None:
    ws = FakeSocket()
    asyncio.run(_send_error(ws, "server_full", "The server is at capacity (4 sessions); please try again later.", 1013, 5.0))
    assert ws.sent == [{"type": "error", "id": None, "code": "server_full",
                        "message": "The server is at capacity (4 sessions); please try again later.", "retry_after_s": 5.0}]
    assert ws.closed is not None and ws.closed[0] == 1013 and ws.closed[1].endswith("retry_after_s=5")
    assert "retry_after_s" not in error_message("bad_request", "x")


def test_close_reasons_fit_the_websocket_limit() -> None:
    assert len(_close_reason("é" * 200).encode("utf-8")) <= 123
    assert _close_reason("short") == "short"
