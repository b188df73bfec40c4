"""Real loopback servers for the outbound tests, and engines whose operator lists them.

``Upstream`` is a small HTTP server that records every request and answers as told (an
OpenAI-compatible engine or embedder, an error with a secret body, a redirect); ``Tarpit``
accepts connections and never answers; ``listed_engine`` is the session's engine with other
outbound settings; ``serve`` runs an app for it under uvicorn.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from unidb.service.engine import Engine

from .conftest import serve

__all__ = ["serve"]

DIM = 8
SECRET = "internal-secret-7f3a"


def vector(text: str) -> list[float]:
    """A deterministic embedding: texts sharing their first word point the same way."""
    seed = int.from_bytes(hashlib.sha256(text.split()[0].lower().encode()).digest()[:4], "big")
    return np.random.default_rng(seed).normal(size=DIM).round(6).tolist()


Answer = tuple[int, dict[str, str], bytes]


def _json(body: Any) -> Answer:
    return 200, {"content-type": "application/json"}, json.dumps(body).encode()


def openai_answer(method: str, path: str, body: Any) -> Answer:
    """What a small OpenAI-compatible server says: one model, completions, embeddings."""
    if method == "GET" and path == "/v1/models":
        return _json({"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})
    if method == "POST" and path == "/v1/completions":
        return _json({
            "choices": [{"text": "x", "index": 0}],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 1,
                      "prompt_tokens_details": {"cached_tokens": 16}},
        })  # fmt: skip
    if method == "POST" and path == "/v1/embeddings":
        inputs = body["input"]
        return _json({
            "object": "list",
            # out of order on purpose: clients must go by "index"
            "data": [{"object": "embedding", "index": i, "embedding": vector(t)}
                     for i, t in reversed(list(enumerate(inputs)))],
        })  # fmt: skip
    return 404, {"content-type": "text/plain"}, f"no {path}".encode()


def secret_answer(method: str, path: str, body: Any) -> Answer:
    """An internal service that must never be read through unidb."""
    return 500, {"content-type": "application/json"}, json.dumps({"keys": SECRET}).encode()


def redirect_to(target: str) -> Callable[[str, str, Any], Answer]:
    def answer(method: str, path: str, body: Any) -> Answer:
        return 307, {"location": target + path, "content-length": "0"}, b""

    return answer


class Upstream:
    """A loopback HTTP server answering with ``answer(method, path, json_body)``; it keeps
    every request it got in ``requests`` as (method, path, body)."""

    def __init__(self, answer: Callable[[str, str, Any], Answer] = openai_answer) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                outer.requests.append((self.command, self.path, body))
                status, headers, payload = answer(self.command, self.path, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "content-length" not in headers:
                    self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _reply  # noqa: N815 - the http.server hooks' names

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tarpit:
    """Accepts connections and never answers; counts them, and how many are open at once."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = self.open = self.most_open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.accepted += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            while conn.recv(65536):  # read the request, answer nothing, until the caller hangs up
                pass
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> Tarpit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def listed_engine(engine: Engine, **settings: Any) -> Iterator[Engine]:
    """The session engine's database with other settings (an outbound list, embedder
    limits); the session engine keeps doing the background work."""
    changed = engine.settings.model_validate({**engine.settings.model_dump(), **settings})
    own = Engine(changed, engine.pool, engine.dsn, background_pool=engine.background_pool)
    own.text_indexes.close()
    own.context.close()
    own.jobs.close()
    try:
        yield own
    finally:
        own.outbound.close()
