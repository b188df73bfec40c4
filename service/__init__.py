"""The unidb service: engine, REST API, CLI."""
