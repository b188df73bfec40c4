"""A collection's chunker: how each document is split into chunks on upsert

NULL (every existing collection) is one chunk per document, as before. SQL's
search_vector ranks a chunked collection's documents by their nearest chunk, among the
nearest 8 chunks per hit asked for.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


# search_vector as migration 0003 made it, but with each document once, at its nearest
# chunk; {chunks_per_hit} is how many chunks the scan reads per hit wanted
_SEARCH_VECTOR = r"""
CREATE OR REPLACE FUNCTION unidb.search_vector(
    collection text, query vector, k integer DEFAULT 10, filter jsonb DEFAULT '{}'
) RETURNS TABLE (id text, score double precision, text text, metadata jsonb)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    found_collection unidb.collections%ROWTYPE;
    operator text;
    score_sql text;
    chunks_per_hit integer;
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
    chunks_per_hit := {chunks_per_hit};
    operator := CASE found_collection.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END;
    score_sql := CASE found_collection.metric WHEN 'cosine' THEN '1 - s.distance' ELSE '-s.distance' END;
    PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    RETURN QUERY EXECUTE format(
        'SELECT d.id, %s, d.text, d.metadata FROM ('
        '  SELECT n.document_key, min(n.distance) AS distance FROM ('
        '    SELECT ch.document_key, (ch.embedding::vector(%s)) %s $1::vector(%s) AS distance'
        '    FROM unidb.chunks ch JOIN unidb.documents dd ON dd.key = ch.document_key'
        '    WHERE ch.collection_id = %s AND ch.embedding IS NOT NULL AND dd.metadata @> $2'
        '    ORDER BY distance LIMIT $3 * %s) n'
        '  GROUP BY n.document_key ORDER BY distance LIMIT $3) s'
        ' JOIN unidb.documents d ON d.key = s.document_key ORDER BY s.distance',
        score_sql, found_collection.dim, operator, found_collection.dim, found_collection.id,
        chunks_per_hit)
    USING query, filter, k;
END
$fn$;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE unidb.collections ADD COLUMN chunker jsonb")
    chunks_per_hit = (
        "CASE WHEN coalesce(found_collection.chunker->>'kind', 'none') = 'none' THEN 1 ELSE 8 END"
    )
    op.execute(_SEARCH_VECTOR.replace("{chunks_per_hit}", chunks_per_hit))


def downgrade() -> None:
    op.execute(_SEARCH_VECTOR.replace("{chunks_per_hit}", "1"))
    op.execute("ALTER TABLE unidb.collections DROP COLUMN chunker")
