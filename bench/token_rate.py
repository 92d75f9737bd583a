"""Token issuance throughput: AgentIdP against node-oidc-provider, in one run.

Run (PostgreSQL and Redis local, wrk and Node.js installed):

    .venv/bin/python bench/token_rate.py                 # 1k agents, then 1M, then the peer
    .venv/bin/python bench/token_rate.py --quick         # 1k agents and the peer only

What it does, each step printed as it goes:

1. Creates a fresh PostgreSQL database (`agentidp_bench`) and empties Redis
   database 14, migrates, and seeds one enterprise organisation with N agents,
   each with one client secret (COPY, so a million agents take seconds).
2. Starts the server the way docs/operations.md recommends for one machine:
   `agentidp serve`, production environment, `WORKERS` workers, ES256 keys
   from the key store, auditing and rate limiting on (RATE_LIMIT_MAX raised
   so that the limiter counts every request but refuses none).
3. Drives `POST /api/v1/token` (client_credentials, HTTP Basic) with wrk and a
   Lua script that picks a random agent per request, after a warm-up; prints
   tokens/s, p50/p99 latency, non-2xx answers, and CPU per token of the server
   processes (and, separately, of PostgreSQL and Redis).
4. Does the same against node-oidc-provider (bench/peer/, installed from npm
   into a scratch folder outside the repository) in cluster mode, and prints
   the ratio. Then checks that every issued token was audited.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_SRC = ROOT / "bench" / "peer"
PG_ADMIN = os.environ.get("AGENTIDP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "agentidp_bench"
REDIS_URL = os.environ.get("AGENTIDP_BENCH_REDIS", "redis://127.0.0.1:6379/14")
PEPPER = "bench-pepper-" + "x" * 32
SEED = b"agentidp-bench"
SCRATCH = Path(
    os.environ.get("AGENTIDP_BENCH_SCRATCH", Path(tempfile.gettempdir()) / "agentidp-bench")
)

INTROSPECT_LUA = """
local body = "token=%(token)s"
request = function()
  return wrk.format("POST", "/api/v1/token/introspect", {
    ["Authorization"] = "%(auth)s",
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }, body)
end
"""

JWKS_LUA = """
request = function()
  return wrk.format("GET", "/.well-known/jwks.json")
end
"""

RESULT_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""

LUA = """
local creds = {}
for line in io.lines("%(file)s") do creds[#creds + 1] = line end
local body = "grant_type=client_credentials"
local counter = 0
request = function()
  counter = counter + 1
  local auth = creds[math.random(#creds)]
  return wrk.format("POST", "%(path)s", {
    ["Authorization"] = auth,
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }, body)
end
"""


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float
    store_cpu_s: float
    warmup_ok: int = 0

    @property
    def rate(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds

    def line(self) -> str:
        ok = max(self.requests - self.non_2xx, 1)
        return (
            f"{self.name:<44} {self.rate:>8.0f} req/s  p50 {self.p50_ms:6.1f} ms  "
            f"p99 {self.p99_ms:6.1f} ms  non-2xx {self.non_2xx}  errors {self.socket_errors}  "
            f"CPU/req {1e6 * self.cpu_s / ok:6.0f} µs server + "
            f"{1e6 * self.store_cpu_s / ok:4.0f} µs PG/Redis"
        )


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# Seeding -------------------------------------------------------------------


def secret_for(i: int) -> str:
    # Deterministic, full-entropy-looking secrets: no need to keep a million of them.
    return base64.urlsafe_b64encode(hmac.new(SEED, str(i).encode(), hashlib.sha256).digest())[
        :43
    ].decode()


def client_id_for(i: int) -> str:
    return hashlib.sha256(b"client" + str(i).encode()).hexdigest()[:32]


async def reset_stores() -> str:
    import asyncpg
    import redis.asyncio as redis

    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DB_NAME}")
    await admin.close()
    client = redis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    await client.aclose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + DB_NAME


async def seed(database_url: str, org_id: str, start: int, stop: int) -> None:
    """Agents start..stop-1 of the bench organisation, each with one client secret."""
    import asyncpg

    from agentidp_server.util.ids import hash_secret

    conn = await asyncpg.connect(database_url)
    now = int(time.time() * 1000)
    if start == 0:
        await conn.execute(
            "INSERT INTO organizations (org_id, name, created_at) VALUES ($1, 'bench', $2)",
            org_id,
            now,
        )
        await conn.execute(
            "INSERT INTO tenant_tiers (org_id, tier, updated_at) VALUES ($1, 'enterprise', $2)",
            org_id,
            now,
        )
    chunk = 100_000
    for low in range(start, stop, chunk):
        high = min(low + chunk, stop)
        agents = [
            (
                f"agent-{i}", org_id, client_id_for(i), "agent", f"bench-{i}", "", "",
                "production", '["api:read"]', "{}", "active", None, now, now,
            )
            for i in range(low, high)
        ]  # fmt: skip
        await conn.copy_records_to_table(
            "agents",
            records=agents,
            columns=[
                "agent_id", "org_id", "client_id", "kind", "name", "description", "owner",
                "deployment_env", "scopes", "metadata", "status", "tokens_valid_after",
                "created_at", "updated_at",
            ],
        )  # fmt: skip
        creds = [
            (
                str(uuid.uuid4()), f"agent-{i}", org_id, "client_secret",
                hash_secret(PEPPER, secret_for(i)), "active", now,
            )
            for i in range(low, high)
        ]  # fmt: skip
        await conn.copy_records_to_table(
            "credentials",
            records=creds,
            columns=[
                "credential_id", "agent_id", "org_id", "type", "secret_hash", "status",
                "created_at",
            ],
        )  # fmt: skip
    # Steady state, as for agents registered over months: no autovacuum or checkpoint
    # of the bulk load running during the measurement.
    await conn.execute("VACUUM (ANALYZE) agents")
    await conn.execute("VACUUM (ANALYZE) credentials")
    await conn.execute("CHECKPOINT")
    await conn.close()


def write_credentials(path: Path, ids: list[tuple[str, str]]) -> None:
    lines = [
        "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode() for cid, secret in ids
    ]
    path.write_text("\n".join(lines) + "\n")


# Processes -----------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return total


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    found = [pid]
    for child in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = child.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(parts[1]) in found:
            found.append(int(child.parent.name))
    return found


def store_pids() -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if name in ("postgres", "redis-server"):
            pids.append(int(comm.parent.name))
    return pids


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own http:// URL
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wrk(
    name: str,
    url: str,
    path: str,
    creds: Path,
    args: argparse.Namespace,
    server_pid: int,
    lua: str | None = None,
) -> Result:
    script = SCRATCH / f"{name.split()[0]}-{name.split()[-1]}.lua"
    script.write_text(lua or LUA % {"file": creds, "path": path} + RESULT_LUA)
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-s", str(script), url]
    warm = subprocess.run(
        [*base[:3], "-d3s", *base[3:]], capture_output=True, text=True, check=True
    ).stdout
    warm_match = re.search(r"RESULT (\d+) \d+ (\d+)", warm)
    warm_ok = int(warm_match.group(1)) - int(warm_match.group(2)) if warm_match else 0
    pids, stores = tree(server_pid), store_pids()
    cpu0, store0 = cpu_seconds(pids), cpu_seconds(stores)
    out = subprocess.run(
        [*base[:3], f"-d{args.duration}s", "--timeout", "10s", *base[3:]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu, store = cpu_seconds(pids) - cpu0, cpu_seconds(stores) - store0
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if not match:
        raise SystemExit(f"wrk printed no result:\n{out}")
    requests, micros, non_2xx, errors = (int(match.group(i)) for i in range(1, 5))
    result = Result(
        name, requests, micros / 1e6, non_2xx, errors,
        float(match.group(5)) / 1000, float(match.group(6)) / 1000, cpu, store, warm_ok,
    )  # fmt: skip
    say(result.line())
    return result


# AgentIdP ------------------------------------------------------------------


def start_agentidp(args: argparse.Namespace, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTIDP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "PORT": str(args.port),
        "ISSUER": f"http://127.0.0.1:{args.port}",
        "WORKERS": str(args.workers),
        "SERVER": args.server,
        "JWT_ALGORITHM": args.alg,
        "KEY_STORE_SECRET": "bench-key-store-secret-" + "y" * 32,
        "CREDENTIAL_PEPPER": PEPPER,
        "RATE_LIMIT_MAX": "1000000000",
        "MIGRATE_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX_SIZE": str(args.pool),
    }
    if not args.access_log:
        env["ACCESS_LOG"] = "false"
    agentidp = str(Path(sys.executable).with_name("agentidp"))
    subprocess.run([agentidp, "db", "migrate"], env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [agentidp, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(SCRATCH / "agentidp.log", "ab"),  # noqa: SIM115 - lives with the process
        start_new_session=True,
    )
    wait_ready(f"http://127.0.0.1:{args.port}/health/ready", process)
    return process


def extras(args: argparse.Namespace, url: str, pid: int, creds: Path) -> None:
    """Introspection and JWKS rates on the same server (RFC 7662 §2.1: client-authenticated)."""
    auth = creds.read_text().splitlines()[0]
    request = urllib.request.Request(  # noqa: S310 - our own http:// URL
        f"{url}/api/v1/token",
        data=b"grant_type=client_credentials",
        headers={"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our server
        token = json.loads(response.read())["access_token"]
    introspect = INTROSPECT_LUA % {"token": token, "auth": auth} + RESULT_LUA
    wrk("introspection (RFC 7662) calls", url, "", creds, args, pid, introspect)
    wrk("JWKS fetches", url, "", creds, args, pid, JWKS_LUA + RESULT_LUA)
    say(verify_cost(url, token))


def verify_cost(url: str, token: str) -> str:
    """What a resource server pays per token in Python, keys already fetched."""
    import jwt as pyjwt
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    with urllib.request.urlopen(f"{url}/.well-known/jwks.json", timeout=10) as response:  # noqa: S310
        jwks = json.loads(response.read())
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    alg = key["alg"]
    public = pyjwt.PyJWK(key).key
    keyset = KeySet.import_key_set(jwks)
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        pyjwt.decode(token, public, algorithms=[alg], options={"verify_aud": False})
    pyjwt_us = 1e6 * (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        jose_jwt.decode(token, keyset, algorithms=[alg])
    jose_us = 1e6 * (time.perf_counter() - started) / rounds
    return (
        f"token verification in Python ({alg}): PyJWT {pyjwt_us:.0f} µs, joserfc {jose_us:.0f} µs"
    )


async def count_audited(database_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    count = await conn.fetchval("SELECT COUNT(*) FROM audit_events WHERE action = 'token.issued'")
    await conn.close()
    return int(count)


def run_agentidp(args: argparse.Namespace) -> list[Result]:
    database_url = asyncio.run(reset_stores())
    org_id = "bench-org"
    results = []
    seeded = 0
    for size in args.sizes:
        say(f"seeding {size - seeded} agents (total {size})")
        started = time.monotonic()
        if seeded == 0:
            # The schema first: `db migrate` runs inside start_agentidp for an empty database.
            env = {**os.environ, "DATABASE_URL": database_url, "AGENTIDP_ENV": "development"}
            agentidp = str(Path(sys.executable).with_name("agentidp"))
            subprocess.run([agentidp, "db", "migrate"], env=env, check=True, capture_output=True)
        asyncio.run(seed(database_url, org_id, seeded, size))
        say(f"seeded in {time.monotonic() - started:.1f} s")
        seeded = size
        sample = sorted({(i * 7919) % size for i in range(min(args.sample, size))})
        creds = SCRATCH / f"agentidp-{size}.txt"
        write_credentials(creds, [(client_id_for(i), secret_for(i)) for i in sample])
        process = start_agentidp(args, database_url)
        url = f"http://127.0.0.1:{args.port}"
        try:
            before = asyncio.run(count_audited(database_url))
            result = wrk(
                f"agentidp {args.server} w{args.workers} {args.alg} {size} agents",
                url,
                "/api/v1/token",
                creds,
                args,
                process.pid,
            )
            results.append(result)
            issued = result.requests - result.non_2xx + result.warmup_ok
            if size == args.sizes[0] and not args.tokens_only:
                extras(args, url, process.pid, creds)
                issued += 1  # the token the introspection load presents
        finally:
            stop(process)
        audited = asyncio.run(count_audited(database_url)) - before
        # wrk stops with requests in flight: the server still answers (and audits) up to
        # one per connection per run after wrk stopped counting.
        in_flight = 2 * args.connections
        verdict = (
            "every token audited"
            if issued <= audited <= issued + in_flight
            else f"MISMATCH (more than {in_flight} apart)"
        )
        say(f"tokens wrk saw answered {issued}; token.issued events {audited}: {verdict}")
    return results


# The peer ------------------------------------------------------------------


def run_peer(args: argparse.Namespace) -> Result:
    peer_dir = SCRATCH / "peer"
    peer_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json", "server.mjs"):
        if (PEER_SRC / name).exists():
            shutil.copy(PEER_SRC / name, peer_dir / name)
    if not (peer_dir / "node_modules" / "oidc-provider").exists():
        say("installing node-oidc-provider from npm into " + str(peer_dir))
        subprocess.run(
            ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"],
            cwd=peer_dir,
            check=True,
            capture_output=True,
        )
    clients = [(f"client{i}", secret_for(i)) for i in range(min(args.sample, 1000))]
    clients_file = peer_dir / "clients.json"
    clients_file.write_text(json.dumps([{"client_id": c, "client_secret": s} for c, s in clients]))
    creds = SCRATCH / "peer.txt"
    write_credentials(creds, clients)
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "PORT": str(args.peer_port),
        "ALG": args.alg,
        "WORKERS": str(args.peer_workers),
        "CLIENTS_FILE": str(clients_file),
    }
    process = subprocess.Popen(
        ["node", "server.mjs"],
        cwd=peer_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(SCRATCH / "peer.log", "ab"),  # noqa: SIM115 - lives with the process
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{args.peer_port}/.well-known/openid-configuration", process)
        return wrk(
            f"node-oidc-provider w{args.peer_workers} {args.alg}",
            f"http://127.0.0.1:{args.peer_port}",
            "/token",
            creds,
            args,
            process.pid,
        )
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="only 1k agents")
    parser.add_argument("--sample", type=int, default=1000, help="agents the load uses")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server", default="hypercorn", choices=["hypercorn", "uvicorn"])
    parser.add_argument("--alg", default="ES256", choices=["ES256", "RS256", "EdDSA"])
    parser.add_argument("--pool", type=int, default=10, help="DB_POOL_MAX_SIZE per worker")
    parser.add_argument("--access-log", action="store_true", help="keep ACCESS_LOG on")
    parser.add_argument("--port", type=int, default=3300)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--tokens-only", action="store_true", help="skip introspection, JWKS and verify costs"
    )
    parser.add_argument("--peer-workers", type=int, default=2)
    parser.add_argument("--peer-port", type=int, default=3301)
    args = parser.parse_args()
    if args.quick:
        args.sizes = [1_000]
    for tool in ("wrk",) + (() if args.no_peer else ("node", "npm")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (Debian: apt-get install {tool})")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    say(f"machine: {os.cpu_count()} CPUs; scratch {SCRATCH}")
    ours = run_agentidp(args)
    peer = None if args.no_peer else run_peer(args)
    print()
    for result in ours:
        print(result.line())
    if peer is not None:
        print(peer.line())
        for result in ours:
            print(f"ratio {result.name} / peer: {result.rate / peer.rate:.2f}")
    if len(ours) > 1:
        print(f"ratio {ours[-1].name} / {ours[0].name}: {ours[-1].rate / ours[0].rate:.2f}")


if __name__ == "__main__":
    main()
