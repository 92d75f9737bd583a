"""Token issuance with auditing on versus off, on PostgreSQL + Redis.

Run: .venv/bin/python bench/audit_cost.py [--tokens 2000] [--concurrency 16]

In-process (the Quart test client, no HTTP server) so the figure isolates what
the audit append costs per token: the chain-head row lock, one INSERT and one
UPDATE in their own transaction, committed before the token is returned.
"Off" replaces the append with a no-op for the measurement only; the server
has no switch to turn auditing off. Rounds alternate on/off to share noise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
import uuid
from typing import Any

from agentidp_server.app import create_app
from agentidp_server.settings import load_settings
from agentidp_server.testing import Services


async def _setup(app: Any) -> tuple[dict[str, str], Any]:
    from agentidp_server.testkit import admin_headers, make_agent, make_org

    idp = app.app.extensions["agentidp"]
    client = app.test_client()
    org = await make_org(idp, "bench", "enterprise")
    _, credential = await make_agent(client, await admin_headers(client, org))
    raw = f"{credential['client_id']}:{credential['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}, client


async def _round(client: Any, headers: dict[str, str], tokens: int, concurrency: int) -> float:
    queue = iter(range(tokens))

    async def worker() -> None:
        for _ in queue:
            response = await client.post(
                "/api/v1/token", form={"grant_type": "client_credentials"}, headers=headers
            )
            assert response.status_code == 200, await response.get_data()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens / (time.perf_counter() - started)


async def main(tokens: int, concurrency: int, rounds: int) -> None:
    services = Services()
    await services.start()
    if services.error:
        raise SystemExit(services.error)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        settings = load_settings(
            env="test",
            environ={},
            overrides={
                "DATABASE_URL": services.database_url,
                "REDIS_URL": services.redis_url,
                "REDIS_KEY_PREFIX": prefix,
                "RATE_LIMIT_MAX": 10**9,
                "JWT_ALGORITHM": "ES256",
            },
        )
        app = create_app(settings)
        async with app.test_app() as test_app:
            headers, client = await _setup(test_app)
            idp = test_app.app.extensions["agentidp"]
            real = idp.audit.record

            async def no_audit(db: Any, **fields: Any) -> dict[str, Any]:
                return {}

            results: dict[str, list[float]] = {"on": [], "off": []}
            await _round(client, headers, tokens // 4, concurrency)  # warm-up
            for _ in range(rounds):
                for mode in ("on", "off"):
                    idp.audit.record = real if mode == "on" else no_audit
                    results[mode].append(await _round(client, headers, tokens, concurrency))
            idp.audit.record = real
        on, off = statistics.median(results["on"]), statistics.median(results["off"])
        print(f"tokens/s with audit:    {on:8.0f}  (rounds: {[round(x) for x in results['on']]})")
        print(f"tokens/s without audit: {off:8.0f}  (rounds: {[round(x) for x in results['off']]})")
        print(f"ratio on/off: {on / off:.2f}; audit cost per token: {1e6 / on - 1e6 / off:.0f} µs")
    finally:
        await services.reset(prefix)
        await services.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.concurrency, args.rounds))
