"""One send per small response under uvicorn.

uvicorn writes a response's status line and headers as soon as the app starts
the response, then the body in a second write: two system calls, and two
wake-ups of the client, per response. On the token endpoint (a few hundred
bytes of JSON) that second write cost about 4 % of a worker's CPU. This
transport wrapper holds a final header block until the next write (the body,
which ASGI requires to follow) or the response's end, whichever comes first,
and sends headers and body in one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _final_header_block(data: bytes) -> bool:
    # "HTTP/1.1 200 OK\r\n...\r\n\r\n"; an interim 1xx (100 Continue) must go at once.
    return data.startswith(b"HTTP/1.") and data.endswith(b"\r\n\r\n") and data[9:10] != b"1"


class CoalescingTransport:
    """Delegates to `transport`, except that a header block waits for the next write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            data, self._held = self._held + bytes(data), b""
        elif _final_header_block(bytes(data)):
            self._held = bytes(data)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        if self._held:
            self._transport.write(self._held)
            self._held = b""

    def close(self) -> None:
        self.flush()  # a response whose body never came: its headers still go out first
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._coalescing = CoalescingTransport(transport)
        super().connection_made(self._coalescing)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # A HEAD answer (or any without a body write) has nothing to carry its headers.
        self._coalescing.flush()
        super().on_response_complete()
