"""A TCP proxy the tests can cut: PostgreSQL or Redis "goes away" without touching the server.

Usage from an async test::

    async with FaultProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        await proxy.down()  # every open connection closed, new ones closed at once
        await proxy.up()  # new connections are forwarded again
        await proxy.stall()  # connections stay open but nothing gets through (a hang)

Only 127.0.0.1 is bound, on a free port the OS picks.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self.is_up = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted and forwarded, for assertions

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        """A proxy to the host and port a service URL names (not started)."""
        parts = urlsplit(url)
        default = 6379 if parts.scheme.startswith("redis") else 5432
        return cls(parts.hostname or "127.0.0.1", parts.port or default)

    def url(self, url: str) -> str:
        """The same service URL, pointed through this proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.down()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def down(self) -> None:
        """Close every open connection; new ones are closed as soon as they arrive."""
        self.is_up = False
        self._flowing.set()  # wake stalled connections so they get closed
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()
        await asyncio.sleep(0)

    async def up(self) -> None:
        """Forward again (stalled data and connections resume)."""
        self.is_up = True
        self._flowing.set()
        await asyncio.sleep(0)

    async def stall(self) -> None:
        """Keep connections open (and accept new ones) but pass no byte either way."""
        self.is_up = True
        self._flowing.clear()
        await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            _abort(writer)
            return
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a stalled proxy holds new connections here
            if not self.is_up:
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), timeout=5
                )
            except (TimeoutError, OSError):
                return
            if not self.is_up:  # went down while we were connecting
                return
            self.connections += 1
            self._writers.add(up_writer)
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            for task in pumps:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pumps:
                    task.cancel()
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    _abort(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while self.is_up:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                if not self.is_up:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            return


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once (RST where the transport supports it)."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        if not transport.is_closing():
            transport.abort()
