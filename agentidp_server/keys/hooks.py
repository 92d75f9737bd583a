"""The signing keyring's start and refresh, registered through the plugin hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from agentidp_server.hookspecs import hookimpl
from agentidp_server.util.background import BackgroundTask

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@hookimpl
def lifespan(idp: IdP) -> AsyncIterator[None]:
    @asynccontextmanager
    async def keys_loaded() -> AsyncIterator[None]:
        await idp.keys.load(idp.db)
        yield

    return keys_loaded()  # type: ignore[return-value]


@hookimpl
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    async def keys() -> None:
        await idp.keys.refresh_forever(idp.db)

    return [BackgroundTask("keys-refresh", keys)]
