"""The ``unidb`` command: ``main`` parses and dispatches to one module per command group
(``server``, ``admin``, ``data``, ``tours``); ``common`` holds what they share, and
``evaluation`` and ``quickstart`` the work of the commands that do more than call the engine."""
