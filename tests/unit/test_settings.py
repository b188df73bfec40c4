"""Settings validation: when keys are required, which outbound URLs are accepted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unidb.service.config import KvEngine, Settings
from unidb.service.outbound import Outbound


def test_auth_is_on_off_the_loopback() -> None:
    assert not Settings(host="127.0.0.1").auth_required
    assert not Settings(host="localhost").auth_required
    assert not Settings(host="::1").auth_required
    assert Settings(host="0.0.0.0").auth_required
    assert Settings(host="db.example.internal").auth_required
    assert Settings(host="127.0.0.1", auth="on").auth_required
    assert not Settings(host="0.0.0.0", auth="off").auth_required


@pytest.mark.parametrize(
    "url",
    [
        "http://h:1/v1?",
        "http://h:1/v1?x=1",
        "http://h:1/#",
        "http://u@h:1",
        "http://h:1\\@evil",
        "http://h:1/ v1",
        "ftp://h:1",
        "http://",
        "h:1",
    ],
)
def test_settings_refuse_outbound_urls_a_request_could_bend(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(outbound_urls={"x": url})
    with pytest.raises(ValidationError):
        KvEngine(name="x", events="tcp://h:2", url=url)


def test_settings_list_outbound_servers_once() -> None:
    settings = Settings(outbound_urls={"tei": "http://tei:80/v1/"})
    assert settings.outbound_urls == {"tei": "http://tei:80/v1"}
    with pytest.raises(ValidationError):
        Settings(outbound_urls={"bad name?": "http://tei:80"})
    both = Settings(
        outbound_urls={"vllm": "http://vllm:8000"},
        kv_engines=[KvEngine(name="vllm", events="tcp://vllm:5557", url="http://other:8000")],
    )
    with pytest.raises(ValueError, match="'vllm' names two servers"):
        Outbound.from_settings(both)
