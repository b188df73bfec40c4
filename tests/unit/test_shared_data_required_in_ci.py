"""A test needing ../shared/data skips where it is absent, and fails under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


def test_absent_data_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "SCIFACT", tmp_path / "nowhere")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nowhere is absent"):
        conftest.scifact()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nowhere is absent"):
        conftest.scifact()
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "corpus.jsonl").write_text("{}\n")
    assert conftest.scifact() == tmp_path / "nowhere"
