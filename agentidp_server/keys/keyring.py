"""Signing keys: the PEM pair from settings, or a rotating store in the database.

Rotation is staged so a rotation never turns a valid token invalid:
a new key is published (JWKS) at once but signs only from `activates_at`
(KEY_ACTIVATION_DELAY later, longer than KEYS_REFRESH_INTERVAL so every
worker and every verifier's JWKS cache has it first); the key it supersedes
stays published until every token it signed has expired. States are derived
from those times, so every process agrees without coordination.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwk

from agentidp_server.storage.db import Database, lock_key
from agentidp_server.storage.errors import StorageUnavailable
from agentidp_server.util import json_codec
from agentidp_server.util.ids import iso, now_ms

if TYPE_CHECKING:
    from agentidp_server.audit.log import AuditLog
    from agentidp_server.storage.postgres import PostgresDatabase

log = logging.getLogger("agentidp.keys")

ALGORITHMS = ("RS256", "ES256", "EdDSA")
Key = jwk.RSAKey | jwk.ECKey | jwk.OKPKey
# Verifiers' clocks and JWKS caches lag a little; keep superseded keys this much longer.
PUBLISH_MARGIN_MS = 60_000
PREVIOUS = "previous"  # the source of a key from JWT_PREVIOUS_PUBLIC_KEYS
# PostgreSQL channel on which a key change is announced (sent on commit) to every process.
KEYS_CHANNEL = "agentidp_keys"
LISTEN_RETRY_MIN, LISTEN_RETRY_MAX = 1.0, 30.0
UNDECRYPTABLE_FIX = (
    "set KEY_STORE_SECRET_PREVIOUS to the secret it was stored with, then run "
    "`agentidp keys reencrypt`"
)
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


class KeyError_(Exception):
    """A key cannot be loaded, generated or used."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate(alg: str) -> Key:
    if alg == "RS256":
        return jwk.RSAKey.generate_key(2048, private=True)
    if alg == "ES256":
        return jwk.ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return jwk.OKPKey.generate_key("Ed25519", private=True)
    raise KeyError_(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def algorithm_for(key: Key) -> str:
    if isinstance(key, jwk.RSAKey):
        return "RS256"
    if isinstance(key, jwk.ECKey) and key.as_dict(private=False).get("crv") == "P-256":
        return "ES256"
    if isinstance(key, jwk.OKPKey) and key.as_dict(private=False).get("crv") == "Ed25519":
        return "EdDSA"
    raise KeyError_("signing keys must be RSA, EC P-256 or Ed25519")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: Key
    created_at: int
    activates_at: int
    revoked_at: int | None = None
    superseded_at: int | None = None  # when the next key began signing
    source: str = "store"

    @cached_property
    def _signer(self) -> Callable[[bytes], bytes]:
        private: Any = self.key.private_key
        if self.alg == "ES256":
            ecdsa = ec.ECDSA(hashes.SHA256())  # immutable: built once, not per token

            def es256(data: bytes) -> bytes:
                # RFC 7518 §3.4: R and S as fixed 32-byte big-endian integers, not DER.
                r, s = decode_dss_signature(private.sign(data, ecdsa))
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")

            return es256
        if self.alg == "RS256":
            return lambda data: bytes(private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        return lambda data: bytes(private.sign(data))  # EdDSA (RFC 8037 §3.1)

    @cached_property
    def _headers(self) -> dict[str, str]:
        return {}

    def encode(self, claims: dict[str, Any], typ: str) -> str:
        """A compact JWS (RFC 7515 §7.1) of `claims`, signed through `cryptography`
        directly with a cached header: the token endpoint's hot path (ES256 signs
        in about 40% of joserfc's time)."""
        header = self._headers.get(typ)
        if header is None:
            header = _b64(json.dumps({"alg": self.alg, "typ": typ, "kid": self.kid}).encode())
            self._headers[typ] = header
        payload = _b64(json_codec.dumps(claims))
        signing_input = f"{header}.{payload}"
        return f"{signing_input}.{_b64(self._signer(signing_input.encode()))}"

    def public_jwk(self) -> dict[str, Any]:
        data = dict(self.key.as_dict(private=False))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data

    def state(self, now: int, token_ttl_ms: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.source == PREVIOUS:
            # Verifies until the operator removes it from JWT_PREVIOUS_PUBLIC_KEYS; never signs.
            return "retired"
        if now < self.activates_at:
            return "published"
        if self.superseded_at is None or now < self.superseded_at:
            return "active"
        if now < self.superseded_at + token_ttl_ms + PUBLISH_MARGIN_MS:
            return "retired"
        return "expired"


async def _announce(conn: Any, db: Database) -> None:
    """Tell every process that the keys changed; PostgreSQL sends it when `conn` commits."""
    if db.dialect == "postgresql":
        await conn.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, "changed")


def _fernet(secret: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"agentidp-keystore", info=b"v1")
    return Fernet(base64.urlsafe_b64encode(derived.derive(secret.encode())))


def _decrypter(settings: Any) -> MultiFernet:
    """The current secret first, then KEY_STORE_SECRET_PREVIOUS (a secret being rotated out)."""
    secrets = [settings.KEY_STORE_SECRET]
    if settings.get("KEY_STORE_SECRET_PREVIOUS"):
        secrets.append(settings.KEY_STORE_SECRET_PREVIOUS)
    return MultiFernet([_fernet(secret) for secret in secrets])


def _undecryptable(kid: str) -> KeyError_:
    return KeyError_(
        f"signing key {kid} cannot be decrypted with KEY_STORE_SECRET"
        " or KEY_STORE_SECRET_PREVIOUS: " + UNDECRYPTABLE_FIX
    )


def _pem(value: str) -> str:
    # Environment variables often carry a PEM with its newlines escaped.
    return value.replace("\\n", "\n")


def _previous_keys(settings: Any) -> list[SigningKey]:
    """JWT_PREVIOUS_PUBLIC_KEYS: published and accepted, never used to sign."""
    keys = []
    for block in _PEM_BLOCK.findall(_pem(settings.get("JWT_PREVIOUS_PUBLIC_KEYS") or "")):
        key = _import(block)
        key.ensure_kid()
        keys.append(SigningKey(str(key.kid), algorithm_for(key), key, 0, 0, source=PREVIOUS))
    return keys


def key_setting_problems(settings: Any) -> list[str]:
    """One line per unusable key setting; never quotes a key (settings.validate calls this)."""
    # A value that is not text already has its type line (Setting.problem).
    private_pem, public_pem, previous = (
        value if isinstance(value := settings.get(name), str) else ""
        for name in ("JWT_PRIVATE_KEY", "JWT_PUBLIC_KEY", "JWT_PREVIOUS_PUBLIC_KEYS")
    )
    problems: list[str] = []
    private: Key | None = None
    if public_pem and not private_pem:
        problems.append(
            "JWT_PUBLIC_KEY is set without JWT_PRIVATE_KEY: set both, or neither to use the "
            "key store (an old public key goes in JWT_PREVIOUS_PUBLIC_KEYS)"
        )
    if private_pem:
        try:
            private = _import(_pem(private_pem))
            algorithm_for(private)
        except KeyError_:
            private = None
            problems.append(f"JWT_PRIVATE_KEY is not {PEM_KINDS} private key")
        else:
            if not private.is_private:
                problems.append("JWT_PRIVATE_KEY is a public key, not a private one")
    if public_pem:
        try:
            public = _import(_pem(public_pem))
        except KeyError_:
            problems.append(f"JWT_PUBLIC_KEY is not {PEM_KINDS} public key")
        else:
            if private is not None and public.as_dict(private=False) != private.as_dict(
                private=False
            ):
                problems.append("JWT_PUBLIC_KEY is not the public half of JWT_PRIVATE_KEY")
    previous = _pem(previous)
    blocks = _PEM_BLOCK.findall(previous)
    if previous.strip() and not blocks:
        problems.append(
            "JWT_PREVIOUS_PUBLIC_KEYS must hold PEM public keys (RSA, EC P-256 or Ed25519)"
        )
    for number, block in enumerate(blocks, 1):
        try:
            old = _import(block)
            algorithm_for(old)
        except KeyError_:
            problems.append(f"JWT_PREVIOUS_PUBLIC_KEYS: key {number} is not {PEM_KINDS} public key")
        else:
            if old.is_private:  # a retired private key has no business in the settings
                problems.append(
                    f"JWT_PREVIOUS_PUBLIC_KEYS: key {number} is a private key; give its public half"
                )
    return problems


PEM_KINDS = "a PEM RSA, EC P-256 or Ed25519"


def _import(pem: str | bytes) -> Key:
    data = pem.encode() if isinstance(pem, str) else pem
    for key_type in ("RSA", "EC", "OKP"):
        try:
            key = jwk.import_key(data, key_type)  # type: ignore[arg-type]
        except Exception:  # noqa: S112 - try the next key type
            continue
        return key  # type: ignore[return-value]
    raise KeyError_("not a PEM RSA, EC or Ed25519 key")


class Keyring:
    """The keys this process signs and verifies with, refreshed from the store."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._keys: list[SigningKey] = []
        self._static = self._load_static()
        self._previous = _previous_keys(settings)
        self._reload_error = ""  # the last refresh failure logged, said once

    @cached_property
    def token_ttl_ms(self) -> int:
        # Read once (settings do not change once loaded): every signature asks.
        return int(self._settings.ACCESS_TOKEN_TTL) * 1000

    def _load_static(self) -> SigningKey | None:
        private_pem = self._settings.JWT_PRIVATE_KEY
        if not private_pem:
            return None
        key = _import(_pem(private_pem))
        public_pem = self._settings.JWT_PUBLIC_KEY
        if public_pem:
            public = _import(_pem(public_pem))
            if public.as_dict(private=False) != key.as_dict(private=False):
                raise KeyError_("JWT_PUBLIC_KEY is not the public half of JWT_PRIVATE_KEY")
        key.ensure_kid()
        return SigningKey(str(key.kid), algorithm_for(key), key, 0, 0, source="settings")

    @property
    def uses_store(self) -> bool:
        return self._static is None

    def _with_previous(self, keys: list[SigningKey]) -> list[SigningKey]:
        loaded = {k.kid for k in keys}
        return [*(k for k in self._previous if k.kid not in loaded), *keys]

    async def load(self, db: Database, *, create: bool = True) -> None:
        """Read the store; with no key at all and `create`, create the first one (under a
        lock). Raises KeyError_ naming the fix when a stored key cannot be decrypted."""
        if self._static is not None:
            self._keys = self._with_previous([self._static])
            return
        rows = await db.fetch("SELECT * FROM signing_keys ORDER BY activates_at, kid")
        if not rows and create:
            await self.rotate(db, delay_s=0, only_if_empty=True)
            rows = await db.fetch("SELECT * FROM signing_keys ORDER BY activates_at, kid")
        fernet = _decrypter(self._settings)
        keys: list[SigningKey] = []
        for row in rows:
            try:
                pem = fernet.decrypt(row["private_key"].encode())
            except InvalidToken:
                raise _undecryptable(row["kid"]) from None
            keys.append(
                SigningKey(
                    row["kid"],
                    row["alg"],
                    _import(pem),
                    row["created_at"],
                    row["activates_at"],
                    row["revoked_at"],
                )
            )
        # A key is superseded when the next key starts signing (revoked or not:
        # revoking the newest key must not bring an older one back to signing).
        superseded = {a.kid: b.activates_at for a, b in pairwise(keys)}
        self._keys = self._with_previous(
            [
                SigningKey(
                    k.kid,
                    k.alg,
                    k.key,
                    k.created_at,
                    k.activates_at,
                    k.revoked_at,
                    superseded.get(k.kid),
                )
                for k in keys
            ]
        )

    async def reencrypt(self, db: Database, audit: AuditLog | None = None) -> int:
        """Re-encrypt every stored private key under KEY_STORE_SECRET, in one transaction,
        so that KEY_STORE_SECRET_PREVIOUS can be dropped; returns how many changed."""
        current = _fernet(self._settings.KEY_STORE_SECRET)
        fernet = _decrypter(self._settings)
        changed: list[str] = []
        async with db.transaction(exclusive_lock=lock_key("signing_keys")) as conn:
            rows = await conn.fetch("SELECT kid, private_key FROM signing_keys ORDER BY kid")
            for row in rows:
                token = row["private_key"].encode()
                try:
                    current.decrypt(token)
                    continue  # already under the current secret
                except InvalidToken:
                    pass
                try:
                    pem = fernet.decrypt(token)
                except InvalidToken:
                    raise _undecryptable(row["kid"]) from None
                await conn.execute(
                    "UPDATE signing_keys SET private_key = $1 WHERE kid = $2",
                    current.encrypt(pem).decode(),
                    row["kid"],
                )
                changed.append(row["kid"])
            if changed and audit is not None:
                event = await audit.append(
                    conn,
                    org_id=None,
                    action="key.reencrypted",
                    target_type="signing_key",
                    target_id=None,
                    details={"kids": changed},
                )
        if changed and audit is not None:
            audit.published(event)
        log.info("Re-encrypted %d signing key(s) under the current KEY_STORE_SECRET", len(changed))
        return len(changed)

    async def rotate(
        self,
        db: Database,
        delay_s: float | None = None,
        *,
        only_if_empty: bool = False,
        audit: AuditLog | None = None,
    ) -> SigningKey | None:
        """Add a key that is published now and signs after the activation delay."""
        if not self.uses_store:
            raise KeyError_("keys come from JWT_PRIVATE_KEY; rotate them by changing the settings")
        if not only_if_empty:
            # Never add a key under a secret the stored ones were not written with.
            await self.load(db, create=False)
        alg = self._settings.JWT_ALGORITHM
        key = generate(alg)
        key.ensure_kid()
        now = now_ms()
        delay = self._settings.KEY_ACTIVATION_DELAY if delay_s is None else delay_s
        pem = key.as_pem(private=True)
        encrypted = _fernet(self._settings.KEY_STORE_SECRET).encrypt(pem).decode()
        async with db.transaction(exclusive_lock=lock_key("signing_keys")) as conn:
            if only_if_empty and await conn.fetchval("SELECT COUNT(*) FROM signing_keys"):
                return None  # another process created the first key while we waited

            await conn.execute(
                "INSERT INTO signing_keys (kid, alg, public_jwk, private_key, created_at, "
                "activates_at) VALUES ($1, $2, $3, $4, $5, $6)",
                key.kid,
                alg,
                json.dumps(key.as_dict(private=False)),
                encrypted,
                now,
                now + int(delay * 1000),
            )
            await _announce(conn, db)
            if audit is not None:
                event = await audit.append(
                    conn,
                    org_id=None,
                    action="key.rotated",
                    target_type="signing_key",
                    target_id=str(key.kid),
                    details={"alg": alg, "activates_at": now + int(delay * 1000)},
                )
        if audit is not None:
            audit.published(event)
        log.info(
            "Signing key %s (%s) added; it signs from %s",
            key.kid,
            alg,
            iso(now + int(delay * 1000)),
        )
        if not only_if_empty:  # load() creates the first key and reads it itself
            await self.load(db, create=False)  # published here at once; elsewhere by notification
        return SigningKey(str(key.kid), alg, key, now, now + int(delay * 1000))

    async def revoke(self, db: Database, kid: str, audit: AuditLog | None = None) -> bool:
        async with db.transaction() as conn:
            count = await conn.execute(
                "UPDATE signing_keys SET revoked_at = $1 WHERE kid = $2 AND revoked_at IS NULL",
                now_ms(),
                kid,
            )
            if count:
                await _announce(conn, db)
            if count and audit is not None:
                event = await audit.append(
                    conn,
                    org_id=None,
                    action="key.revoked",
                    target_type="signing_key",
                    target_id=kid,
                )
        if count and audit is not None:
            audit.published(event)
        if count:
            await self.load(db, create=False)
        return count > 0

    def states(self, now: int | None = None) -> list[tuple[SigningKey, str]]:
        now = now_ms() if now is None else now
        return [(k, k.state(now, self.token_ttl_ms)) for k in self._keys]

    def signing_key(self) -> SigningKey:
        active = [k for k, state in self.states() if state == "active"]
        if not active:
            raise KeyError_("no active signing key")
        return active[-1]

    def published(self) -> list[SigningKey]:
        return [k for k, s in self.states() if s in ("published", "active", "retired")]

    def any_key(self, kid: str) -> SigningKey | None:
        """A loaded key that is not revoked, published or not (old audit checkpoints)."""
        for key in self._keys:
            if key.kid == kid and key.revoked_at is None:
                return key
        return None

    def verification_key(self, kid: str) -> SigningKey | None:
        for key in self.published():
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.published()]}

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """A compact JWS of `claims` by the current signing key (ID tokens, access tokens)."""
        return self.signing_key().encode(claims, typ)

    async def refresh_forever(self, db: Database) -> None:
        """Reload every KEYS_REFRESH_INTERVAL and, on PostgreSQL, as soon as any process
        announces a change (the storage port's LISTEN connection, as the client cache's)."""
        interval = float(self._settings.KEYS_REFRESH_INTERVAL)
        if db.dialect != "postgresql":
            # SQLite serves one process, and rotate/revoke reload it themselves.
            while True:
                await asyncio.sleep(interval)
                await self._reload(db)
        delay, said = LISTEN_RETRY_MIN, ""
        while True:
            try:
                await self._listen(cast("PostgresDatabase", db), interval)
                why = "the notification connection was lost"
                delay = LISTEN_RETRY_MIN  # it was listening: reconnect promptly
            except StorageUnavailable as error:
                why = f"PostgreSQL is unavailable ({error})"
            if why != said:  # once per reason, not once per retry
                log.warning("Key changes are not being announced to this worker: %s", why)
                said = why
            await asyncio.sleep(min(delay, interval))
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    async def _listen(self, db: PostgresDatabase, interval: float) -> None:
        """Reload on each announcement (and every `interval`) until the connection is lost."""
        wake = asyncio.Event()
        lost = False

        def on_lost() -> None:
            nonlocal lost
            lost = True
            wake.set()

        async with db.listen(KEYS_CHANNEL, lambda _payload: wake.set(), on_lost):
            await self._reload(db)  # a change committed before LISTEN took effect
            while not lost:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await wake.wait()
                wake.clear()
                if not lost:
                    await self._reload(db)

    async def _reload(self, db: Database) -> None:
        """Reload; a key this worker cannot decrypt (a KEY_STORE_SECRET change reached the
        store before this worker's settings) is one error line, and the keys it already
        has keep serving."""
        try:
            await self.load(db)
        except KeyError_ as error:
            if str(error) != self._reload_error:
                log.error("Signing keys not reloaded: %s", error)
            self._reload_error = str(error)
        else:
            self._reload_error = ""
