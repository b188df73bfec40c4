"""API keys: created once, stored as argon2 hashes, checked on every request.

A key reads ``unidb_<id>_<secret>``. The id finds the row; the secret is checked against its
argon2 hash. argon2 is slow on purpose, so a key that verified is remembered (by a SHA-256
of the whole key, never the key itself) for ``CACHE_S`` seconds; revoking a key clears this
process's memory of it at once and other processes' within that time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from unidb.errors import InvalidInput, NotFound, TooManyRequests
from unidb.indexing.pg import Connection

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
CACHE_S = 30.0
# keys and client addresses remembered for failed checks, at most
_MAX_REMEMBERED = 10_000
_KEY = re.compile(r"^unidb_([a-z0-9]{12})_([A-Za-z0-9_-]{32,64})$")
TENANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def parse_scopes(text: str) -> list[Scope]:
    named = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(named) - set(SCOPES))
    if unknown or not named:
        raise InvalidInput(
            f"scopes must be some of {', '.join(SCOPES)}; got {text!r}", field="scopes"
        )
    return [s for s in SCOPES if s in named]


def check_tenant(tenant: str) -> None:
    if not TENANT_NAME.match(tenant):
        raise InvalidInput("a tenant is 1 to 64 letters, digits, '_', '.' or '-'", field="tenant")


def create_key(conn: Connection, tenant: str, scopes: list[Scope]) -> tuple[str, str]:
    """A new key for ``tenant``: returns (id, the whole key). Only its hash is stored."""
    check_tenant(tenant)
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO unidb.api_keys (id, tenant, scopes, secret_hash) VALUES (%s, %s, %s, %s)",
        (key_id, tenant, list(scopes), _hasher.hash(secret)),
    )
    return key_id, f"unidb_{key_id}_{secret}"


def _key_row(conn_factory: Any, key_id: str) -> Any:
    """(tenant, scopes, secret_hash) of a live key, or None."""
    with conn_factory() as conn:
        return conn.execute(
            "SELECT tenant, scopes, secret_hash FROM unidb.api_keys"
            " WHERE id = %s AND revoked_at IS NULL",
            (key_id,),
        ).fetchone()


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(
        "SELECT id, tenant, scopes, created_at, revoked_at FROM unidb.api_keys ORDER BY created_at"
    ).fetchall()
    return [KeyInfo(*row) for row in rows]


class KeyChecker:
    """Checks bearer keys against the table, remembering good ones for a while.

    argon2 is slow on purpose, so what reaches it is bounded: at most ``concurrency``
    verifications run at once, a client address has at most that many in flight, a key that
    failed is refused from memory for ``CACHE_S``, and once failures and checks in flight
    reach ``failures_allowed`` within ``window_s`` for one address or one key id, further
    checks are refused (TooManyRequests) without hashing. Those limits never refuse a key
    this process has verified before: argon2 gives the same answer for the same secret and
    hash, so such a key needs only its row read again (is it revoked, has it a new hash).
    """

    def __init__(
        self,
        *,
        concurrency: int = 2,
        failures_allowed: int = 10,
        window_s: float = 60.0,
        remember_s: float = CACHE_S,
    ) -> None:
        self._remember_s = remember_s
        self._known: dict[bytes, tuple[float, Principal]] = {}
        # SHA-256 of a key that verified → the argon2 hash it verified against
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self._failures: dict[str, deque[float]] = {}
        self._in_flight: Counter[str] = Counter()
        self._hashing = threading.BoundedSemaphore(concurrency)
        self._concurrency = concurrency
        self._failures_allowed = failures_allowed
        self._window_s = window_s
        self._lock = threading.Lock()

    def remembered(self, key: str) -> Principal | None:
        """The principal of a key that verified lately, from memory alone (no I/O, no hash
        beyond SHA-256): cheap enough for the event loop."""
        digest = hashlib.sha256(key.encode()).digest()
        with self._lock:
            known = self._known.get(digest)
        if known is not None and time.monotonic() - known[0] < self._remember_s:
            return known[1]
        return None

    def check(self, conn_factory: Any, key: str, *, client: str | None = None) -> Principal | None:
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        with self._lock:
            known = self._known.get(digest)
            refused_at = self._refused.get(digest)
            verified_hash = self._verified.get(digest)
        if known is not None and now - known[0] < self._remember_s:
            return known[1]
        match = _KEY.match(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        if verified_hash is not None:
            row = _key_row(conn_factory, key_id)
            if row is not None and row[2] == verified_hash:
                return self._remember(digest, now, key_id, row)
        if refused_at is not None and now - refused_at < self._remember_s:
            return None
        names = (f"key:{key_id}", f"client:{client or 'unknown'}")
        self._admit(names, now)
        try:
            row = _key_row(conn_factory, key_id)
            if row is None:
                self._failed(digest, now, names[1])
                return None
            with self._hashing:
                try:
                    _hasher.verify(row[2], secret)
                except (VerificationError, InvalidHashError):
                    self._failed(digest, now, *names)
                    return None
        finally:
            with self._lock:
                for name in names:
                    self._in_flight[name] -= 1
                    if self._in_flight[name] <= 0:
                        del self._in_flight[name]
        return self._remember(digest, now, key_id, row)

    def _remember(self, digest: bytes, now: float, key_id: str, row: Any) -> Principal:
        tenant, scopes, secret_hash = row
        principal = Principal(tenant, frozenset(scopes), key_id)
        with self._lock:
            self._known[digest] = (now, principal)
            self._verified[digest] = secret_hash
            self._verified.move_to_end(digest)
            while len(self._verified) > _MAX_REMEMBERED:
                self._verified.popitem(last=False)
        return principal

    def _admit(self, names: tuple[str, str], now: float) -> None:
        """Reserve a check for the key id and the address, or refuse it: failures and
        checks in flight count alike, so a burst cannot outrun the limit."""
        key, address = names
        with self._lock:
            for name in names:
                if len(self._recent(name, now)) + self._in_flight[name] >= self._failures_allowed:
                    raise TooManyRequests(
                        "too many failed API key checks from this client or for this key; "
                        f"retry in {self._window_s:.0f} s (UNIDB_KEY_FAILURES_ALLOWED)",
                        field="authorization",
                    )
            if self._in_flight[address] >= self._concurrency:
                raise TooManyRequests(
                    "this client has API key checks in flight already; retry shortly",
                    field="authorization",
                )
            for name in names:
                self._in_flight[name] += 1

    def _recent(self, name: str, now: float) -> deque[float]:
        recent = self._failures.get(name)
        if recent is None:
            return deque()
        while recent and now - recent[0] > self._window_s:
            recent.popleft()
        if not recent:
            del self._failures[name]
        return recent

    def _failed(self, digest: bytes, now: float, *names: str) -> None:
        with self._lock:
            self._refused[digest] = now
            while len(self._refused) > _MAX_REMEMBERED:
                self._refused.popitem(last=False)
            for name in names:
                self._failures.setdefault(name, deque()).append(now)
            # the names that failed longest ago go first (a scan for expired ones would cost
            # every failure the whole memory); expired ones also go when next looked up
            while len(self._failures) > _MAX_REMEMBERED:
                del self._failures[next(iter(self._failures))]

    def revoke(self, conn: Connection, key_id: str) -> None:
        cursor = conn.execute(
            "UPDATE unidb.api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (key_id,),
        )
        if cursor.rowcount == 0:
            raise NotFound(f"no live key {key_id!r}", field="id")
        with self._lock:
            self._known = {d: p for d, p in self._known.items() if p[1].key_id != key_id}
