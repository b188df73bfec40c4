"""The request gate: host, origin and media type checked, and the API key checked from the
headers before any body is read; /metrics for the operator alone; key checks bounded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr

import unidb
from unidb.errors import TooManyRequests
from unidb.service import auth
from unidb.service.api import errors
from unidb.service.api.gate import RequestGate
from unidb.service.api.main import create_app
from unidb.service.auth.keys import KeyChecker
from unidb.service.config import Settings
from unidb.service.engine import Engine

from .conftest import LocalClient, snapshot

OPERATOR_KEY = "operator-secret-for-tests"


@pytest.fixture
def auth_on(engine: Engine) -> Iterator[None]:
    """The session's engine with API keys required and an operator key set; its failed-check
    memory is this test's own, so that a storm here does not lock other tests out."""
    plain, keys = engine.settings, engine.keys
    engine.settings = plain.model_copy(
        update={"auth": "on", "operator_key": SecretStr(OPERATOR_KEY)}
    )
    engine.keys = KeyChecker(
        concurrency=plain.key_check_concurrency, failures_allowed=plain.key_failures_allowed
    )
    try:
        yield
    finally:
        engine.settings, engine.keys = plain, keys


def _key(engine: Engine, tenant: str, *scopes: auth.Scope) -> str:
    with engine.transaction() as conn:
        return auth.create_key(conn, tenant, list(scopes))[1]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- item 4: a page in the user's browser cannot drive the no-key loopback service --------


def test_a_simple_text_plain_post_is_refused(
    api: TestClient, engine: Engine, collection: str
) -> None:
    assert api.post("/v1/collections", json={"name": collection, "dim": 2}).status_code == 201
    before = snapshot(engine)
    body = '{"documents": [{"id": "a", "text": "planted by a web page"}]}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        refused = api.post(f"/v1/collections/{collection}/documents", content=body, headers=headers)
        assert refused.status_code == 415
        assert refused.json()["error"]["field"] == "content-type"
    assert snapshot(engine) == before
    written = api.post(
        f"/v1/collections/{collection}/documents",
        content=body,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert written.status_code == 200


@pytest.mark.parametrize("path", ["/v1/collections", "/healthz", "/metrics", "/docs"])
def test_dns_rebinding_hosts_are_refused(api: TestClient, path: str) -> None:
    refused = api.get(path, headers={"host": "evil.example"})
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "host"
    for own in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert api.get(path, headers={"host": own}).status_code == 200


def test_cross_origin_requests_are_refused(
    api: TestClient, engine: Engine, collection: str
) -> None:
    before = snapshot(engine)
    for origin in ("http://evil.example", "http://127.0.0.1:3000", "null"):
        refused = api.post(
            "/v1/collections", json={"name": collection, "dim": 2}, headers={"origin": origin}
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["field"] == "origin"
    assert snapshot(engine) == before
    same_origin = api.post(
        "/v1/collections",
        json={"name": collection, "dim": 2},
        headers={"origin": "http://127.0.0.1:8000", "host": "127.0.0.1:8000"},
    )
    assert same_origin.status_code == 201


def test_listed_hosts_and_origins_are_admitted(settings: Settings, engine: Engine) -> None:
    listed = settings.model_copy(
        update={
            "allowed_hosts": ["unidb.internal"],
            "allowed_origins": ["https://console.example.com"],
        }
    )
    with TestClient(create_app(listed, engine=engine), base_url="http://unidb.internal") as api:
        assert api.get("/v1/collections").status_code == 200
        assert api.get("/v1/collections", headers={"host": "127.0.0.1"}).status_code == 400
        listed_origin = {"origin": "https://console.example.com"}
        assert api.get("/v1/collections", headers=listed_origin).status_code == 200
        other = {"origin": "https://evil.example.com"}
        assert api.get("/v1/collections", headers=other).status_code == 403


# -- item 5: /metrics belongs to the operator ---------------------------------------------


@pytest.mark.usefixtures("auth_on")
def test_metrics_need_the_operator_key(api: TestClient, engine: Engine, collection: str) -> None:
    acme_admin = _key(engine, "acme", "read", "write", "admin")
    created = api.post(
        "/v1/collections", json={"name": collection, "dim": 2}, headers=_bearer(acme_admin)
    )
    assert created.status_code == 201
    evil_admin = _key(engine, "evil", "read", "write", "admin")
    assert api.get("/metrics").status_code == 401
    for key in (evil_admin, acme_admin, OPERATOR_KEY + "x"):
        refused = api.get("/metrics", headers=_bearer(key))
        assert refused.status_code == 403
        assert collection not in refused.text
    operator = api.get("/metrics", headers=_bearer(OPERATOR_KEY))
    assert operator.status_code == 200 and "unidb_http_request_seconds" in operator.text
    # probing the engines every tenant shares is the operator's too
    for key in (evil_admin, acme_admin):
        refused = api.get("/v1/engines", headers=_bearer(key))
        assert refused.status_code == 403 and "UNIDB_OPERATOR_KEY" in refused.text
    probed = api.get("/v1/engines", headers=_bearer(OPERATOR_KEY))
    assert probed.status_code == 200 and probed.json() == {"engines": []}


# -- item 2: nothing heavy before authentication ------------------------------------------


def _send_unauthenticated_body(url: str, size: int) -> int:
    """POST ``size`` bytes of JSON without a key, streamed, and return the status."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/transactions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
        )
        chunk = b'{"ops": [' + b" " * (1 << 20)
        sent = 0
        try:
            while sent < size:
                piece = chunk[: min(len(chunk), size - sent)]
                sock.sendall(piece)
                sent += len(piece)
                chunk = b" " * (1 << 20)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: what we want
        reply = b""
        try:
            while b"\r\n" not in reply:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    return int(reply.split(b" ", 2)[1]) if reply else 0


@pytest.mark.usefixtures("auth_on")
def test_unauthenticated_bodies_are_refused_before_they_are_read(server_url: str) -> None:
    process = psutil.Process()
    rss_before = process.memory_info().rss
    with ThreadPoolExecutor(10) as pool:
        sends = [pool.submit(_send_unauthenticated_body, server_url, 50 << 20) for _ in range(10)]
        time.sleep(0.2)  # the bodies are on their way
        began = time.perf_counter()
        health = httpx.get(f"{server_url}/healthz", timeout=10)
        health_s = time.perf_counter() - began
        statuses = [send.result() for send in sends]
    rss_growth = process.memory_info().rss - rss_before
    assert statuses == [401] * 10
    assert health.status_code == 200 and health_s < 1.0
    assert rss_growth < 100 << 20


@pytest.mark.usefixtures("auth_on")
def test_keyless_routes_take_a_small_body_only(engine: Engine) -> None:
    """A route that needs no key reads at most UNIDB_MAX_UNAUTHENTICATED_BODY_BYTES."""
    app = FastAPI()
    errors.install(app)
    app.state.engine = engine

    @app.post("/public")
    async def public(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_middleware(RequestGate, settings=engine.settings)
    limit = engine.settings.max_unauthenticated_body_bytes
    with LocalClient(app, raise_server_exceptions=False) as api:
        assert api.post("/public", content=b"x" * limit).json() == {"read": limit}
        refused = api.post("/public", content=b"x" * (limit + 1))
        assert refused.status_code == 413
        assert "UNIDB_MAX_UNAUTHENTICATED_BODY_BYTES" in refused.json()["error"]["message"]


# -- item 11: key checks are bounded --------------------------------------------------------


@pytest.mark.usefixtures("auth_on")
def test_wrong_secrets_do_not_hold_up_a_valid_key(server_url: str, engine: Engine) -> None:
    valid = _key(engine, "acme", "read")
    assert httpx.get(f"{server_url}/v1/collections", headers=_bearer(valid)).status_code == 200
    key_id = _key(engine, "acme", "read").split("_")[1]
    wrong = [f"unidb_{key_id}_{'w' * 40}{i:03d}" for i in range(50)]

    def attempt(key: str) -> int:
        return httpx.get(
            f"{server_url}/v1/collections", headers=_bearer(key), timeout=60
        ).status_code

    with ThreadPoolExecutor(50) as pool:
        storm = [pool.submit(attempt, key) for key in wrong]
        time.sleep(0.1)
        began = time.perf_counter()
        answered = attempt(valid)
        valid_s = time.perf_counter() - began
        statuses = [s.result() for s in storm]
    assert answered == 200 and valid_s < 2.0  # the bound the README gives
    assert set(statuses) <= {401, 429} and statuses.count(429) >= 30
    # past the allowed failures the key id is refused without hashing, whatever the secret
    allowed = engine.settings.key_failures_allowed
    more = [attempt(f"unidb_{key_id}_{'z' * 40}{i:03d}") for i in range(allowed + 1)]
    assert more[-1] == 429


def test_key_checks_are_bounded_per_address_and_key(engine: Engine) -> None:
    checker = KeyChecker(concurrency=2, failures_allowed=3)
    good = _key(engine, "acme", "read")
    other_good = _key(engine, "acme", "read")
    key_id = _key(engine, "acme", "read").split("_")[1]
    for i in range(3):
        assert (
            checker.check(engine.pool.connection, f"unidb_{key_id}_{'w' * 40}{i:03d}", client="a")
            is None
        )
    with pytest.raises(TooManyRequests):
        checker.check(engine.pool.connection, f"unidb_{key_id}_{'v' * 43}", client="a")
    with pytest.raises(TooManyRequests):  # the key id too, from another address
        checker.check(engine.pool.connection, f"unidb_{key_id}_{'v' * 43}", client="b")
    # another key from another address is checked as usual
    assert checker.check(engine.pool.connection, good, client="b") is not None
    # a repeated wrong key is refused from memory, not hashed again
    assert (
        checker.check(engine.pool.connection, f"unidb_{key_id}_{'w' * 40}000", client="c") is None
    )
    # a valid key checked from a third address while another hashes away
    done: list[float] = []

    def hammer() -> None:
        for i in range(20):
            try:
                checker.check(
                    engine.pool.connection, f"unidb_{'q' * 12}_{'w' * 40}{i:03d}", client="d"
                )
            except TooManyRequests:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    assert checker.check(engine.pool.connection, other_good, client="e") is not None
    done.append(time.perf_counter() - began)
    for thread in threads:
        thread.join()
    assert done[0] < 2.0


@pytest.mark.parametrize(
    "host", ["[::1]evil.example", "127.0.0.1:evil", "127.0.0.1:80:80", "127.0.0.1 evil", ""]
)
def test_malformed_hosts_are_refused(api: TestClient, host: str) -> None:
    refused = api.get("/v1/collections", headers={"host": host})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "host"


def test_repeated_headers_the_gate_checks_are_refused(server_url: str, collection: str) -> None:
    parts = urlsplit(server_url)
    body = b'{"name": "%s", "dim": 2}' % collection.encode()
    request = (
        b"POST /v1/collections HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
    assert reply.split(b" ", 2)[1] == b"400"
    assert b"more than one content-type header" in reply
    assert httpx.get(f"{server_url}/v1/collections/{collection}").status_code == 404


def test_a_path_with_a_line_break_reaches_no_document(api: TestClient, collection: str) -> None:
    api.post("/v1/collections", json={"name": collection, "dim": 2})
    api.post(f"/v1/collections/{collection}/documents", json={"documents": [{"id": "keep"}]})
    for method in ("GET", "DELETE"):
        refused = api.request(method, f"/v1/collections/{collection}/documents/keep%0A")
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "path"
    assert api.get(f"/v1/collections/{collection}/documents/keep").status_code == 200


def test_a_key_verified_before_outlasts_an_attack_on_its_id(engine: Engine) -> None:
    # remember_s=0: nothing answers from the 30 s memory, every check reads the key's row
    checker = KeyChecker(concurrency=2, failures_allowed=3, remember_s=0)
    good = _key(engine, "acme", "read")
    key_id = good.split("_")[1]
    assert checker.check(engine.pool.connection, good, client="user") is not None
    for i in range(3):
        wrong = f"unidb_{key_id}_{'w' * 40}{i:03d}"
        assert checker.check(engine.pool.connection, wrong, client=f"attacker{i}") is None
    with pytest.raises(TooManyRequests):
        checker.check(engine.pool.connection, f"unidb_{key_id}_{'v' * 43}", client="x")
    # the attacked key id and the attacker's address do not lock its owner out
    assert checker.check(engine.pool.connection, good, client="attacker0") is not None
    assert checker.check(engine.pool.connection, good, client="user") is not None
    with engine.transaction() as conn:  # revoked: the memory of it no longer counts, and
        checker.revoke(conn, key_id)  # its id is still under attack
    with pytest.raises(TooManyRequests):
        checker.check(engine.pool.connection, good, client="user")


def test_a_burst_cannot_outrun_the_failure_limit(engine: Engine) -> None:
    allowed = 5
    checker = KeyChecker(concurrency=2, failures_allowed=allowed)
    key_id = _key(engine, "acme", "read").split("_")[1]

    def attempt(i: int) -> str:
        wrong = f"unidb_{key_id}_{'w' * 40}{i:03d}"
        try:
            found = checker.check(engine.pool.connection, wrong, client=f"a{i // 2}")
        except TooManyRequests:
            return "refused"
        assert found is None
        return "hashed"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count("hashed") <= allowed
    assert outcomes.count("refused") >= 50 - allowed


def test_sdk_refuses_an_id_that_is_not_unicode(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        with pytest.raises(unidb.InvalidInput) as refused:
            client.delete(collection, "\udcff")
        assert refused.value.field == "id"
