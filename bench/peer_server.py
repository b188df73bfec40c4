"""The REST-equivalent peer of unidb's query route: what a user would otherwise write.

    python bench/peer_server.py --port P --dsn DSN --collection-id N --dim D --corpus FILE

A FastAPI app over uvicorn, like unidb's, with two routes: ``POST /vector`` runs the same
pgvector HNSW query on the same table through a psycopg pool (same ef_search), and
``POST /bm25`` asks bm25s, in process, over the same texts. Each answers the ids and
scores of the top ``k`` as JSON. ``GET /healthz`` answers at once.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import bm25s
import numpy as np
import Stemmer
import uvicorn
from fastapi import FastAPI, Request, Response
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool


def create_app(dsn: str, collection_id: int, dim: int, ids: list[str], texts: list[str]) -> FastAPI:
    def configure(conn: Any) -> None:
        register_vector(conn)
        conn.execute("SET hnsw.ef_search = 100")
        conn.commit()

    pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=2, max_size=4, configure=configure)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    statement = (
        f"SELECT document_key, (c.embedding::vector({dim})) <=> %s::vector({dim}) AS distance"
        f" FROM unidb.chunks c WHERE c.collection_id = {collection_id}"
        f" ORDER BY (c.embedding::vector({dim})) <=> %s::vector({dim}) LIMIT %s"
    )
    app = FastAPI()

    def nearest(vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        with pool.connection() as conn:
            return conn.execute(statement, (vector, vector, k)).fetchall()  # type: ignore[arg-type]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/vector")
    async def vector(request: Request) -> Response:
        body = json.loads(await request.body())
        query = np.asarray(body["vector"], dtype=np.float32)
        rows = await run_in_threadpool(nearest, query, int(body.get("k", 10)))
        hits = [{"key": key, "score": 1.0 - distance} for key, distance in rows]
        return Response(json.dumps({"hits": hits}), media_type="application/json")

    def lookup(text: str, k: int) -> list[dict[str, Any]]:
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        found, scores = retriever.retrieve(tokens, k=k, show_progress=False)
        return [{"id": ids[i], "score": float(s)} for i, s in zip(found[0], scores[0], strict=True)]

    @app.post("/bm25")
    async def bm25(request: Request) -> Response:
        body = json.loads(await request.body())
        hits = await run_in_threadpool(lookup, body["text"], int(body.get("k", 10)))
        return Response(json.dumps({"hits": hits}), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--collection-id", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--corpus", required=True, help="JSON lines of {id, text}")
    args = parser.parse_args()
    with open(args.corpus) as stream:
        records = [json.loads(line) for line in stream]
    app = create_app(
        args.dsn,
        args.collection_id,
        args.dim,
        [r["id"] for r in records],
        [r["text"] for r in records],
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
