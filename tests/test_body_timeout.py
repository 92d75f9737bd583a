"""BodyReadTimeout against bare ASGI apps: the deadline, the 408, and cancellations
that are not its own (issue 25 item 7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentidp_server.server.body_timeout import BodyReadTimeout


def _trickle(chunks: int, pause: float) -> Any:
    async def receive() -> dict[str, Any]:
        nonlocal chunks
        await asyncio.sleep(pause)
        chunks -= 1
        return {"type": "http.request", "body": b"a", "more_body": chunks > 0}

    return receive


async def _run(app: Any, receive: Any, timeout: float) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await BodyReadTimeout(app, timeout)({"type": "http"}, receive, send)
    return sent


async def test_a_body_past_the_deadline_is_answered_408_and_the_app_sees_a_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] == "http.request":
            if not message["more_body"]:
                break
        seen.append(message["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent = await _run(app, _trickle(100, 0.02), timeout=0.1)
    assert seen == ["http.disconnect"]
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [408]


async def test_a_body_in_time_is_untouched() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["more_body"]:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent = await _run(app, _trickle(3, 0.001), timeout=5)
    assert [m["status"] for m in sent] == [200]


async def test_an_app_busy_elsewhere_at_the_deadline_is_not_cancelled_there() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.15)  # past the deadline, not in receive: must not be cancelled
        message = await receive()
        assert message["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent = await _run(app, _trickle(1, 0.5), timeout=0.05)
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert starts == [408]  # the app's own answer, after the 408, is dropped


async def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    task = asyncio.create_task(_run(app, _trickle(1, 10), timeout=5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
