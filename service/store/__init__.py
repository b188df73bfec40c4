"""One module per table, each owning its reads and writes: the collections catalog
(``catalog``), ``documents`` (with their chunks and outbox rows, loaded by binary COPY from
``copy_payload``), application ``state``, ``jobs``, and ``commit_tokens``. Functions take a
connection in a transaction; none commits."""
