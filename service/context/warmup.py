"""Warming an engine's prefix cache: send a prefix with ``max_tokens=1``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from unidb.errors import InvalidInput, Unavailable

_TIMEOUT_S = 120.0


def _base(engine_url: str) -> str:
    url = engine_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def warm(
    engine_url: str, token_ids: Sequence[int], *, model: str | None, cache_salt: str | None
) -> tuple[str, int, int | None]:
    """Prefill ``token_ids`` on an OpenAI-compatible completions endpoint.

    Returns (model, prompt tokens, tokens the engine reported as already cached)."""
    base = _base(engine_url)
    try:
        with httpx.Client(timeout=_TIMEOUT_S) as http:
            if model is None:
                listed = http.get(f"{base}/v1/models")
                listed.raise_for_status()
                models = listed.json().get("data") or []
                if not models:
                    raise InvalidInput("the engine serves no model", field="engine_url")
                model = str(models[0]["id"])
            body: dict[str, Any] = {"model": model, "prompt": list(token_ids), "max_tokens": 1}
            if cache_salt:
                body["cache_salt"] = cache_salt
            answer = http.post(f"{base}/v1/completions", json=body)
            answer.raise_for_status()
            usage = answer.json().get("usage") or {}
    except httpx.HTTPStatusError as exc:
        raise Unavailable(
            f"the engine answered {exc.response.status_code}: {exc.response.text[:200]}",
            field="engine_url",
        ) from exc
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise Unavailable(f"the engine could not be reached: {exc}", field="engine_url") from exc
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return model, int(usage.get("prompt_tokens", len(token_ids))), cached
