"""A bound on the time a client takes to send its request body (issue 25 item 7).

Neither server bounds it: hypercorn's `read_timeout` restarts at every byte and
uvicorn has none, so a client trickling a byte every few seconds holds a
connection (and a worker's slot) for as long as it likes. This ASGI wrapper,
under both servers, answers 408 and closes once the body is not complete
REQUEST_READ_TIMEOUT seconds after the request started; the app then sees the
client as gone (`http.disconnect`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
MESSAGE = "the request body was not received within REQUEST_READ_TIMEOUT"


class BodyReadTimeout:
    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False
        response_started = False
        timed_out = False

        async def guarded_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                if timed_out:
                    return {"type": "http.disconnect"}
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                if not response_started:
                    await _send_408(send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return  # the 408 already answered this request
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


async def _send_408(send: Send) -> None:
    # The API's error shape with a request id of its own: the app never saw this request.
    request_id = str(uuid.uuid4())
    body = json.dumps(
        {"code": REQUEST_TIMEOUT, "message": MESSAGE, "request_id": request_id}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
