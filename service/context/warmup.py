"""Warming an engine's prefix cache: send a prefix with ``max_tokens=1``.

The engine is an operator-listed server (see ``unidb.service.outbound``); its answers are
read, never echoed: a failure says which engine and what status, nothing it sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from unidb.errors import BadGateway, GatewayTimeout, InvalidInput
from unidb.service.outbound import Upstream

_TIMEOUT_S = 120.0


def _json(response: httpx.Response, upstream: Upstream, field: str) -> Any:
    if response.status_code != 200:
        raise BadGateway(
            f"the engine {upstream.name!r} answered HTTP {response.status_code}", field=field
        )
    return response.json()


def warm(
    upstream: Upstream,
    token_ids: Sequence[int],
    *,
    model: str | None,
    cache_salt: str | None,
    field: str = "engine",
) -> tuple[str, int, int | None]:
    """Prefill ``token_ids`` on the engine's OpenAI-compatible completions endpoint;
    ``field`` is the request field that named it.

    Returns (model, prompt tokens, tokens the engine reported as already cached)."""
    try:
        with httpx.Client(timeout=_TIMEOUT_S, follow_redirects=False) as http:
            if model is None:
                models = _json(http.get(upstream.url("/v1/models")), upstream, field)["data"]
                if not models:
                    raise InvalidInput(
                        f"the engine {upstream.name!r} lists no model; name one", field="model"
                    )
                model = str(models[0]["id"])
            body: dict[str, Any] = {"model": model, "prompt": list(token_ids), "max_tokens": 1}
            if cache_salt:
                body["cache_salt"] = cache_salt
            answer = _json(http.post(upstream.url("/v1/completions"), json=body), upstream, field)
            usage = answer.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", len(token_ids)))
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            cached_tokens = None if cached is None else int(cached)
    except httpx.TimeoutException as exc:
        raise GatewayTimeout(
            f"the engine {upstream.name!r} did not answer within {_TIMEOUT_S:g} s", field=field
        ) from exc
    except httpx.HTTPError as exc:
        raise BadGateway(f"the engine {upstream.name!r} could not be reached", field=field) from exc
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadGateway(
            f"the engine {upstream.name!r} sent an answer that is not OpenAI's", field=field
        ) from exc
    return model, prompt_tokens, cached_tokens
