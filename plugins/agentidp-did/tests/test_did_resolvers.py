"""Independent DID tooling resolves our DIDs from a real server behind TLS.

`agentidp serve` runs as operators run it, behind a TLS-terminating proxy (as
an ingress would be) with a certificate for `localhost` issued by a throwaway
CA made here with `cryptography`. The resolvers are the DIF/Ceramic JavaScript
libraries (`did-resolver`, `web-did-resolver`, `key-did-resolver`) and
`did-jwt` for JWT verification, downloaded from the npm registry on the first
run into the repository's ignored `.cache/npm/` (or AGENTIDP_DID_NODE_CACHE);
Node trusts the CA through NODE_EXTRA_CA_CERTS.
Slow: starts a server process (and Node) per test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base58
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))

from did_helpers import new_key, public_jwk, sign, verify_with_document

from agentidp_did.identifiers import did_key

pytestmark = pytest.mark.slow

AGENTIDP = Path(sys.executable).with_name("agentidp")
HARNESS = Path(__file__).resolve().parent / "did_resolve.mjs"
# Pinned: did-jwt 9 needs Node 22; 8.x is maintained and runs on Node 20.
NODE_PACKAGES = (
    "did-resolver@4.1.0",
    "web-did-resolver@2.0.32",
    "key-did-resolver@4.0.0",
    "did-jwt@8.0.18",
)
NPM_INSTALL = ("install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")
START_TIMEOUT = 30.0
VERIFIER = "did:web:verifier.example"
CARD = "https://agents.example.com/worker/.well-known/agent-card.json"


def services_required() -> bool:
    return os.environ.get("AGENTIDP_TEST_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Node resolver ---------------------------------------------------------------


# The repository's own ignored folder (.gitignore), so the tests write nothing under $HOME.
REPO_CACHE = Path(__file__).resolve().parents[3] / ".cache" / "npm"


def _cache_root() -> Path:
    return Path(os.environ.get("AGENTIDP_DID_NODE_CACHE", REPO_CACHE))


def _install_node_packages(npm: str) -> Path:
    """The pinned packages in a cache directory, installed once per version set."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(" ".join(NODE_PACKAGES).encode()).hexdigest()[:16]
    target = root / f"node-{digest}"
    if (target / "node_modules" / "did-jwt" / "package.json").exists():
        return target
    staging = Path(tempfile.mkdtemp(dir=root, prefix="staging-"))
    (staging / "package.json").write_text('{"private": true, "type": "module"}\n')
    # npm's own download cache too (its default is ~/.npm).
    env = {**os.environ, "npm_config_cache": str(root / "npm-cache")}
    result = subprocess.run(
        [npm, *NPM_INSTALL, *NODE_PACKAGES],
        cwd=staging,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"npm install failed:\n{result.stderr[-2000:]}")
    try:
        staging.rename(target)  # atomic: a concurrent run that got there first keeps its copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def node_resolver() -> Path:
    """A directory holding the resolver packages and the harness script (ESM resolves
    packages from the script's own directory, not NODE_PATH)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    try:
        if node is None or npm is None:
            raise RuntimeError("node and npm are needed for the independent DID resolvers")
        target = _install_node_packages(npm)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        if services_required():
            pytest.fail(str(error))
        pytest.skip(str(error))
    script = target / "did_resolve.mjs"
    if not script.exists() or script.read_bytes() != HARNESS.read_bytes():
        shutil.copyfile(HARNESS, script)
    return target


def test_npm_packages_are_cached_in_the_repositorys_ignored_folder() -> None:
    root = REPO_CACHE.parents[1]
    assert (root / "pyproject.toml").exists()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(REPO_CACHE / "node-x" / "package.json")],
        cwd=root,
        check=False,
    )
    assert ignored.returncode == 0, ".cache/ must be in .gitignore"


def run_node(directory: Path, ca: Path | None, request: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    if ca is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca)
    result = subprocess.run(
        ["node", str(directory / "did_resolve.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


# TLS -------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `localhost` it signed: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentidp-did test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        # did:web spec §2.5.2 (DNS): the certificate names the DID's host, never an IP.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class TlsProxy:
    """Terminates TLS on `localhost` (IPv4 and, where present, IPv6) and pipes bytes
    to the plain HTTP server, as an ingress in front of `agentidp serve` would."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.port = free_port()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> list[asyncio.Server]:
        servers = [
            await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context)
        ]
        # Node may try ::1 first for `localhost`; answer there too when the host has IPv6.
        with contextlib.suppress(OSError):
            servers.append(
                await asyncio.start_server(self._handle, "::1", self.port, ssl=self._context)
            )
        return servers

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.backend_port
            )
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


# The server ------------------------------------------------------------------


@dataclass
class TlsServer:
    issuer: str
    port: int
    ca: Path
    env: dict[str, str]
    cwd: Path

    def log(self) -> str:
        return (self.cwd / "serve.log").read_text(errors="replace")[-4000:]

    @property
    def host_did(self) -> str:
        # did:web spec §3.1: the port's colon is percent-encoded.
        return f"did:web:localhost%3A{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.issuer, verify=ssl.create_default_context(cafile=str(self.ca))
        )


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any AgentIdP, plugin or storage setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "DID_", "HELLO_", "PLUGINS__"))
        and k not in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "WORKERS", "ISSUER")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def tls_server(tmp_path: Path, agentidp_storage: dict[str, Any]) -> Iterator[TlsServer]:
    ca, cert, key = make_certificates(tmp_path)
    backend_port = free_port()
    proxy = TlsProxy(backend_port, cert, key)
    issuer = f"https://localhost:{proxy.port}"
    env = base_env(
        AGENTIDP_ENV="development",
        AGENTIDP_DATA_DIR=str(tmp_path),
        DATABASE_URL=agentidp_storage["DATABASE_URL"],
        ISSUER=issuer,
        DID_ENABLED="true",
    )
    if agentidp_storage["REDIS_URL"] != "memory://":
        env["REDIS_URL"] = agentidp_storage["REDIS_URL"]
        env["AGENTIDP_REDIS_KEY_PREFIX"] = agentidp_storage["REDIS_KEY_PREFIX"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(AGENTIDP), "serve", "--host", "127.0.0.1", "--port", str(backend_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        line = f"AgentIdP listening on port {backend_port}"
        deadline = time.monotonic() + START_TIMEOUT
        while line not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield TlsServer(issuer, proxy.port, ca, env, tmp_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        proxy.close()


def create_org(server: TlsServer) -> dict[str, Any]:
    result = subprocess.run(
        [str(AGENTIDP), "orgs", "create", "Acme"],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    org: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return org


def setup_agent(server: TlsServer, http: httpx.Client) -> dict[str, Any]:
    """An organisation, an agent with an A2A card and Ed25519, P-256 and RSA keys."""
    org = create_org(server)
    response = http.post(
        "/api/v1/token",
        data={"grant_type": "client_credentials"},
        auth=(org["client_id"], org["client_secret"]),
    )
    assert response.status_code == 200, (response.text, server.log())
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    response = http.post(
        "/api/v1/agents",
        json={
            "name": "worker",
            "deployment_env": "production",
            "metadata": {"a2a_agent_card": CARD},
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    agent = response.json()
    keys = {kind: new_key(kind) for kind in ("Ed25519", "P-256", "RSA")}
    jwks = {}
    for kind, key in keys.items():
        response = http.post(
            f"/api/v1/agents/{agent['agent_id']}/credentials",
            json={"type": "private_key_jwt", "jwk": public_jwk(key)},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        jwks[kind] = response.json()["jwk"]
    did = f"{server.host_did}:agents:{agent['agent_id']}"
    return {"agent": agent, "headers": headers, "keys": keys, "jwks": jwks, "did": did}


async def test_independent_resolvers_resolve_and_verify(tls_server, node_resolver):
    with tls_server.client() as http:
        setup = setup_agent(tls_server, http)
        served = http.get(f"/agents/{setup['agent']['agent_id']}/did.json")
    did, keys, jwks = setup["did"], setup["keys"], setup["jwks"]
    assert served.headers["content-type"] == "application/did+ld+json"
    key_dids = {kind: did_key(jwks[kind]) for kind in ("Ed25519", "P-256")}

    claims = {"aud": VERIFIER, "nonce": "n-0S6_WzA2Mj"}
    by_web = {
        kind: sign(keys[kind], kind, {"iss": did, **claims}, f"{did}#{jwks[kind]['kid']}")
        for kind in ("Ed25519", "P-256", "RSA")
    }
    by_key = {
        # did:key spec §3.1.2: the verification method's fragment is the multibase key.
        kind: sign(keys[kind], kind, {"iss": d, **claims}, f"{d}#{d.removeprefix('did:key:')}")
        for kind, d in key_dids.items()
        if d is not None
    }
    answer = run_node(
        node_resolver,
        tls_server.ca,
        {
            "resolve": [did, tls_server.host_did, *key_dids.values()],
            "verify": [
                {"jwt": by_web["Ed25519"], "audience": VERIFIER},
                {"jwt": by_web["P-256"], "audience": VERIFIER},
                *({"jwt": t, "audience": VERIFIER} for t in by_key.values()),
            ],
        },
    )

    # did:web: the document resolved over TLS is the one served, with a matching id.
    resolved = answer["resolved"][did]
    assert "error" not in resolved["didResolutionMetadata"], resolved
    assert resolved["didResolutionMetadata"]["contentType"] == "application/did+ld+json"
    document = resolved["didDocument"]
    assert document["id"] == did
    assert document == served.json()
    assert document["alsoKnownAs"] == list(key_dids.values())
    server_document = answer["resolved"][tls_server.host_did]["didDocument"]
    assert server_document["id"] == tls_server.host_did

    # did:key: the resolver derives the same key from the identifier alone.
    for kind, key_did in key_dids.items():
        key_result = answer["resolved"][key_did]
        assert key_result["didDocument"]["id"] == key_did, key_result
        method = key_result["didDocument"]["verificationMethod"][0]
        if kind == "P-256":
            got = method["publicKeyJwk"]
            assert (got["kty"], got["crv"]) == (jwks[kind]["kty"], jwks[kind]["crv"])
            # Compared as numbers: key-did-resolver drops a coordinate's leading zero byte
            # (RFC 7518 §6.2.1.2 wants the full 32 bytes, which our JWK has).
            for coordinate in ("x", "y"):
                assert _as_int(got[coordinate]) == _as_int(jwks[kind][coordinate])
        else:
            x = jwks[kind]["x"]
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            assert method["publicKeyBase58"] == base58.b58encode(raw).decode()

    # did-jwt verifies the agent's JWTs, resolving the issuer's DID itself.
    web_ed, web_p256, *key_results = answer["verified"]
    for result, kind in ((web_ed, "Ed25519"), (web_p256, "P-256")):
        assert result["ok"], result
        assert result["issuer"] == did
        assert result["signer"] == f"{did}#{jwks[kind]['kid']}"
    assert [r["ok"] for r in key_results] == [True, True], key_results
    assert [r["issuer"] for r in key_results] == list(key_dids.values())

    # Without trusting the test CA the resolver refuses the server: TLS is really checked.
    untrusted = run_node(node_resolver, None, {"resolve": [did]})["resolved"][did]
    assert untrusted["didResolutionMetadata"]["error"] == "notFound"
    assert untrusted["didDocument"] is None

    # PyJWT, with the keys of the independently resolved document (RSA too).
    for kind, token in by_web.items():
        assert verify_with_document(token, document, VERIFIER)["iss"] == did, kind


async def test_independent_resolver_sees_deactivation(tls_server, node_resolver):
    with tls_server.client() as http:
        setup = setup_agent(tls_server, http)
        path = f"/api/v1/agents/{setup['agent']['agent_id']}"
        response = http.patch(path, json={"status": "suspended"}, headers=setup["headers"])
        assert response.status_code == 200, response.text
        served = http.get(f"/agents/{setup['agent']['agent_id']}/did.json")
    assert served.status_code == 410
    assert served.json()["didDocumentMetadata"]["deactivated"] is True

    did, jwks = setup["did"], setup["jwks"]
    token = sign(
        setup["keys"]["Ed25519"],
        "Ed25519",
        {"iss": did, "aud": VERIFIER},
        f"{did}#{jwks['Ed25519']['kid']}",
    )
    answer = run_node(
        node_resolver,
        tls_server.ca,
        {"resolve": [did], "verify": [{"jwt": token, "audience": VERIFIER}]},
    )
    # did:web spec §3.2.4: a deactivated did:web no longer resolves to a document with keys.
    assert answer["resolved"][did]["didResolutionMetadata"]["error"] == "notFound"
    assert not answer["verified"][0]["ok"]


def _as_int(b64url: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(b64url + "=" * (-len(b64url) % 4)), "big")
