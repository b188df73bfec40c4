"""SQL search functions: vector, full-text and hybrid (RRF) search in one statement

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Filters here are jsonb containment (metadata @> filter), the native Postgres form; the
# REST filter language is richer. search_vector builds its statement with the collection's
# dimension and id as literals so the planner can use the collection's partial HNSW index,
# and turns on pgvector's iterative scan for the calling transaction so a filter does not
# leave the answer short.

UPGRADE = r"""
CREATE FUNCTION unidb.search_vector(
    collection text, query vector, k integer DEFAULT 10, filter jsonb DEFAULT '{}'
) RETURNS TABLE (id text, score double precision, text text, metadata jsonb)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    found_collection unidb.collections%ROWTYPE;
    operator text;
    score_sql text;
BEGIN
    SELECT * INTO found_collection FROM unidb.collections c WHERE c.name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'collection % does not exist', collection USING ERRCODE = 'P0002';
    END IF;
    IF vector_dims(query) <> found_collection.dim THEN
        RAISE EXCEPTION 'expected % dimensions for collection %, got %',
            found_collection.dim, collection, vector_dims(query) USING ERRCODE = '22023';
    END IF;
    IF k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    operator := CASE found_collection.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END;
    score_sql := CASE found_collection.metric WHEN 'cosine' THEN '1 - s.distance' ELSE '-s.distance' END;
    PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    RETURN QUERY EXECUTE format(
        'SELECT d.id, %s, d.text, d.metadata FROM ('
        '  SELECT ch.document_key, (ch.embedding::vector(%s)) %s $1::vector(%s) AS distance'
        '  FROM unidb.chunks ch JOIN unidb.documents dd ON dd.key = ch.document_key'
        '  WHERE ch.collection_id = %s AND ch.embedding IS NOT NULL AND dd.metadata @> $2'
        '  ORDER BY distance LIMIT $3) s'
        ' JOIN unidb.documents d ON d.key = s.document_key ORDER BY s.distance',
        score_sql, found_collection.dim, operator, found_collection.dim, found_collection.id)
    USING query, filter, k;
END
$fn$;

CREATE FUNCTION unidb.search_text(
    collection text, query text, k integer DEFAULT 10, filter jsonb DEFAULT '{}'
) RETURNS TABLE (id text, score double precision, text text, metadata jsonb)
LANGUAGE sql STABLE AS $fn$
    WITH q AS (
        -- any of the query's stemmed words, not all of them: retrieval, not matching
        SELECT to_tsquery('english', array_to_string(tsvector_to_array(to_tsvector('english', query)), ' | ')) AS q
    )
    SELECT d.id,
           ts_rank_cd(to_tsvector('english', coalesce(d.metadata->>'title', '') || ' ' || d.text), q.q)::double precision,
           d.text, d.metadata
    FROM unidb.documents d, q
    WHERE d.collection_id = (SELECT c.id FROM unidb.collections c WHERE c.name = collection)
      AND d.metadata @> filter
      AND numnode(q.q) > 0
      AND to_tsvector('english', coalesce(d.metadata->>'title', '') || ' ' || d.text) @@ q.q
    ORDER BY 2 DESC, d.id
    LIMIT k
$fn$;

CREATE FUNCTION unidb.search_hybrid(
    collection text, query_text text, query_vector vector, k integer DEFAULT 10,
    filter jsonb DEFAULT '{}', rrf_k integer DEFAULT 60
) RETURNS TABLE (id text, score double precision, text text, metadata jsonb)
LANGUAGE sql STABLE AS $fn$
    WITH by_vector AS (
        SELECT s.id, s.rank FROM unidb.search_vector(collection, query_vector, greatest(k, 100), filter)
            WITH ORDINALITY AS s(id, score, text, metadata, rank)
    ), by_text AS (
        SELECT s.id, s.rank FROM unidb.search_text(collection, query_text, greatest(k, 100), filter)
            WITH ORDINALITY AS s(id, score, text, metadata, rank)
    ), fused AS (
        SELECT coalesce(v.id, t.id) AS id,
               coalesce(1.0 / (rrf_k + v.rank), 0) + coalesce(1.0 / (rrf_k + t.rank), 0) AS score
        FROM by_vector v FULL JOIN by_text t ON v.id = t.id
    )
    SELECT f.id, f.score::double precision, d.text, d.metadata
    FROM fused f JOIN unidb.documents d
      ON d.id = f.id AND d.collection_id = (SELECT c.id FROM unidb.collections c WHERE c.name = collection)
    ORDER BY f.score DESC, f.id
    LIMIT k
$fn$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION unidb.search_hybrid(text, text, vector, integer, jsonb, integer)")
    op.execute("DROP FUNCTION unidb.search_text(text, text, integer, jsonb)")
    op.execute("DROP FUNCTION unidb.search_vector(text, vector, integer, jsonb)")
