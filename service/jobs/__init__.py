"""Background work that outlives a request: index build jobs and their ``runner`` (heartbeat,
takeover of silent processes' jobs), and the Ray builds and ingest (``distributed``)."""
