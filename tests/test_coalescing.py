"""Headers and body in one send under uvicorn (agentidp_server/server/coalescing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import uvicorn

from agentidp_server.server.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport

HEADERS = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """The parts of an asyncio transport the wrapper uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)


def test_headers_wait_for_the_body() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder)  # type: ignore[arg-type]
    transport.write(HEADERS)
    assert recorder.writes == []
    transport.write(b"{}")
    assert recorder.writes == [HEADERS + b"{}"]
    # A chunked body's later pieces are not held.
    transport.write(b"more")
    assert recorder.writes[-1] == b"more"


def test_an_empty_body_still_releases_the_headers() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder)  # type: ignore[arg-type]
    transport.write(HEADERS.replace(b"200 OK", b"204 No Content"))
    transport.write(b"")  # uvicorn writes the (empty) body of a 204 or a HEAD
    assert recorder.writes == [HEADERS.replace(b"200 OK", b"204 No Content")]


def test_interim_responses_go_at_once() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_close_sends_held_headers_first() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder)  # type: ignore[arg-type]
    transport.write(HEADERS)
    transport.close()
    assert recorder.writes == [HEADERS]
    assert recorder.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5000)  # delegated


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":  # no content-length: chunked, in several writes
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b"x" * 100_000 if scope["path"] == "/big" else b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_uvicorn_serves_through_it(unused_tcp_port: int) -> None:
    config = uvicorn.Config(
        _app, port=unused_tcp_port, http=CoalescingHttpToolsProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client:
            for _ in range(3):  # keep-alive: several responses on one connection
                response = await client.get("/small")
                assert response.json() == {"ok": True}
            assert len((await client.get("/big")).content) == 100_000
            assert (await client.get("/stream")).content == b"one,two,three"
            head = await client.head("/small")
            assert head.status_code == 200
            assert head.content == b""
    finally:
        server.should_exit = True
        await task
