"""Answering a query: metadata ``filters`` compiled to SQL, the retrievers (``bm25`` over
tantivy, ``ann`` over FAISS snapshots kept by ``ann_indexes``, ``pgvector`` exact or ``hnsw``),
``fusion`` of their lists, and ``hits`` read back from Postgres."""
