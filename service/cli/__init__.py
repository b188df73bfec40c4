"""The ``unidb`` command: ``main`` parses and dispatches; ``evaluation`` and ``quickstart``
are the commands that do more than call the engine."""

from unidb.service.cli.main import main

__all__ = ["main"]
