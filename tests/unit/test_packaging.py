"""What ships: the public SDK surface, docker-compose wiring, the Dockerfile."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import yaml

import unidb
from unidb.service.config import KvEngine

from ..conftest import REPO


def test_public_surface_is_what_we_say() -> None:
    assert sorted(unidb.__all__) == sorted(
        [
            "AsyncClient",
            "Backend",
            "BadGateway",
            "Client",
            "Collection",
            "Conflict",
            "Document",
            "Forbidden",
            "GatewayTimeout",
            "Hit",
            "InvalidInput",
            "NotFound",
            "PayloadTooLarge",
            "QueryResponse",
            "ServerError",
            "StoredDocument",
            "TooManyRequests",
            "Transaction",
            "Unauthorized",
            "Unavailable",
            "UnidbError",
            "UnsupportedMediaType",
            "UpsertResult",
            "__version__",
        ]
    )
    for name in unidb.__all__:
        assert hasattr(unidb, name), name


def test_sdk_imports_nothing_of_the_server() -> None:
    for path in (REPO / "sdk").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith(
                    ("fastapi", "psycopg", "sqlalchemy", "unidb.schema", "unidb.indexing")
                ), (path, node.module)
                if node.module.startswith("unidb.service"):
                    # only Client.embedded reaches for the engine, lazily
                    assert path.name == "_client.py"


def test_docker_compose_wires_postgres_and_service() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "unidb"}
    postgres, service = services["postgres"], services["unidb"]
    assert postgres["image"].startswith("pgvector/pgvector:")
    assert "healthcheck" in postgres and "healthcheck" in service
    assert service["build"] == "."
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = service["environment"]["UNIDB_DATABASE_URL"]
    match = re.fullmatch(r"postgresql://(\w+):(\w+)@postgres:5432/(\w+)", url)
    assert match, url
    env = postgres["environment"]
    assert match.groups() == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
    assert "8000:8000" in service["ports"]
    assert service["environment"]["UNIDB_PORT"] == "8000"


def test_docker_compose_vllm_profile_matches_unidb_settings() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    vllm, service = compose["services"]["vllm"], compose["services"]["unidb"]
    assert vllm["profiles"] == ["vllm"]
    flags = vllm["command"]
    assert "--enable-prefix-caching" in flags
    env = service["environment"]
    assert f"--prefix-caching-hash-algo={env['UNIDB_KV_HASH_ALGO']}" in flags
    assert vllm["environment"]["PYTHONHASHSEED"] == env["UNIDB_KV_HASH_SEED"]
    events = json.loads(
        next(f for f in flags if f.startswith("--kv-events-config=")).split("=", 1)[1]
    )
    assert events["enable_kv_cache_events"] and events["publisher"] == "zmq"
    engines = KvEngine.model_validate(json.loads(env["UNIDB_KV_ENGINES"])[0])
    assert engines.events.endswith(":" + events["endpoint"].rsplit(":", 1)[1])
    assert engines.replay and engines.replay.endswith(events["replay_endpoint"].rsplit(":", 1)[1])
    assert "./models:/models:ro" in service["volumes"] and "./models:/models:ro" in vllm["volumes"]


def test_docker_compose_scale_profile() -> None:
    """A streaming replica of the primary, a second unidb process reading from it and sharing
    the first one's data volume, and a Ray head that can embed and build."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    scale = {name for name, spec in services.items() if spec.get("profiles") == ["scale"]}
    assert scale == {"postgres-replica", "unidb-2", "ray-head"}
    primary, replica = services["postgres"], services["postgres-replica"]
    assert replica["image"] == primary["image"]
    assert (
        "./docker/replication.sh:/docker-entrypoint-initdb.d/replication.sh:ro"
        in (primary["volumes"])
    )
    assert (REPO / "docker" / "replica.sh").stat().st_mode & 0o111
    assert "pg_basebackup -h postgres" in (REPO / "docker" / "replica.sh").read_text()
    second = services["unidb-2"]
    replicas = json.loads(second["environment"]["UNIDB_REPLICA_URLS"])
    assert replicas == ["postgresql://unidb:unidb@postgres-replica:5432/unidb"]
    assert (
        second["environment"]["UNIDB_DATABASE_URL"]
        == (services["unidb"]["environment"]["UNIDB_DATABASE_URL"])
    )
    assert "unidata:/data" in second["volumes"] and "unidata:/data" in services["unidb"]["volumes"]
    ray_head = services["ray-head"]
    assert "ray" in ray_head["build"]["args"]["EXTRAS"].split(",")
    assert ray_head["command"][:3] == ["ray", "start", "--head"]


def test_dockerfile_serves_on_the_composed_port() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.M)
    assert "ARG EXTRAS=server" in dockerfile and 'pip install ".[${EXTRAS}]"' in dockerfile
    assert "EXPOSE 8000" in dockerfile
    assert 'CMD ["unidb", "serve"]' in dockerfile
    for folder in ("sdk", "schema", "indexing", "service"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def _extra_closure(extra: str) -> set[str]:
    """The distributions ``unidb[extra]`` installs, following its ``unidb[...]`` references."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    found: set[str] = set()
    pending = [extra]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in extras[name]:
            if requirement.startswith("unidb["):
                pending += requirement[len("unidb[") : requirement.index("]")].split(",")
            else:
                found.add(re.split(r"[<>=\[;! ]", requirement, maxsplit=1)[0].lower())
    return found


def test_each_install_brings_exactly_one_faiss() -> None:
    from unidb.indexing.faiss_index import FAISS_DISTRIBUTIONS

    for extra, expected in (("server", "faiss-cpu"), ("all", "faiss-cpu"),
                            ("gpu", "faiss-gpu-cu12-cuvs")):  # fmt: skip
        assert _extra_closure(extra) & set(FAISS_DISTRIBUTIONS) == {expected}, extra
    assert "fastapi" in _extra_closure("gpu")  # the whole service, with the GPU's FAISS


def test_two_faiss_distributions_are_reported_with_the_fix(monkeypatch: Any) -> None:
    from unidb.indexing import faiss_index

    assert faiss_index.faiss_install_problem() is None  # this environment has one
    monkeypatch.setattr(
        faiss_index, "installed_faiss", lambda: ["faiss-cpu", "faiss-gpu-cu12-cuvs"]
    )
    problem = faiss_index.faiss_install_problem()
    assert problem is not None
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12-cuvs" in problem
    assert "'unidb[server]'" in problem and "'unidb[gpu]'" in problem
