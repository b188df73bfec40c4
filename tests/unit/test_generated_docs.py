"""Files generated from the code stay in step with it: docs/configuration.md with Settings,
and the quickstart's bundled corpus with the README and docs/ it is cut from."""

from __future__ import annotations

from pathlib import Path

from unidb.service import config_docs
from unidb.service.cli import docs_corpus
from unidb.service.config import Settings

REPO = Path(__file__).resolve().parents[2]


def test_configuration_page_lists_every_setting_as_the_code_has_it() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == config_docs.render(), (
        "docs/configuration.md is stale: run python -m unidb.service.config_docs"
    )
    for name in Settings.model_fields:
        assert f"`UNIDB_{name.upper()}`" in page


def test_every_setting_says_what_it_does() -> None:
    silent = [name for name, field in Settings.model_fields.items() if not field.description]
    assert silent == []


def test_the_bundled_corpus_is_cut_from_the_docs_as_they_are() -> None:
    bundled = docs_corpus.bundled_corpus()
    assert bundled.read_text(encoding="utf-8") == docs_corpus.render(REPO), (
        "the quickstart corpus is stale: run python -m unidb.service.cli.docs_corpus"
    )


def test_passages_keep_code_blocks_whole_and_name_their_section(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    fence = "```"
    long_code = "\n".join(f"line {i} of the example" for i in range(80))
    (tmp_path / "README.md").write_text(
        f"# Title\n\nIntro.\n\n## Setup\n\n{fence}bash\n# not a heading\n\n{long_code}\n{fence}\n\n"
        "After the code.\n"
    )
    (tmp_path / "docs" / "configuration.md").write_text("# skipped\n")
    records = docs_corpus.passages(tmp_path)
    assert [r["title"] for r in records] == ["Title", "Title › Setup", "Title › Setup"]
    code = records[1]["text"]
    assert code.startswith(f"{fence}bash\n# not a heading") and code.endswith(fence)
    assert len(code) > docs_corpus.MAX_PASSAGE_CHARS  # one block, however long, stays whole
    assert records[2]["text"] == "After the code."
    assert {r["metadata"]["page"] for r in records} == {"README.md"}
