"""Fixtures shared by the kernel's fault tests: a FaultProxy in front of each real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentidp_server.testing import Services, services_required
from agentidp_server.util.clock import TestClock
from tests.faultproxy import FaultProxy


def _require(services: Services) -> None:
    if services.error:
        if services_required():
            pytest.fail(services.error)
        pytest.skip(services.error)


@pytest.fixture
async def pg_proxy(agentidp_services: Services) -> AsyncIterator[FaultProxy]:
    _require(agentidp_services)
    async with FaultProxy.for_url(agentidp_services.database_url) as proxy:
        yield proxy


@pytest.fixture
async def redis_proxy(agentidp_services: Services) -> AsyncIterator[FaultProxy]:
    _require(agentidp_services)
    async with FaultProxy.for_url(agentidp_services.redis_url) as proxy:
        yield proxy


@pytest.fixture
def clock(agentidp_clock: TestClock) -> TestClock:
    """The kernel's clock, stopped for the test (agentidp_server.testing's `agentidp_clock`)."""
    return agentidp_clock
