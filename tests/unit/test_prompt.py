"""Prompt layout: pieces tokenized on their own concatenate to the prompt's tokens, segments
fit their room (cut at a word), the budget and the orders."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from unidb.errors import InvalidInput
from unidb.models import ContextTemplate
from unidb.service.context import prompt
from unidb.service.context.prompt import Chunk, Layout
from unidb.service.context.tokenizer import Tokenizers


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizers({}, allow_paths=False).get("minilm")


TEMPLATE = ContextTemplate()
CHUNKS = [
    Chunk(key=i, id=f"d{i}", version=1, text=text, title=f"t{i}")
    for i, text in enumerate(
        ["autophagy declines with age", "protein turnover slows in old cells", "short one"]
    )
]


def _tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_pieces_concatenate_to_the_whole_prompt(tokenizer: Tokenizer) -> None:
    head_text, head, tail_text, tail = prompt.frame(tokenizer, TEMPLATE, "what declines?")
    assert head_text == TEMPLATE.system and tail_text == "\n\nQuestion: what declines?\nAnswer:"
    pieces = prompt.pieces(tokenizer, TEMPLATE, CHUNKS, room=1000)
    assert [p.text for p in pieces] == [f"\n\n[d{i}] {c.text}" for i, c in enumerate(CHUNKS)]
    assert not any(p.truncated for p in pieces)
    layout = Layout(head, pieces, tail, head_text, tail_text)
    assert layout.prompt.startswith(TEMPLATE.system) and layout.prompt.endswith("Answer:")
    assert layout.token_ids == _tokens(tokenizer, layout.prompt)
    assert layout.prefix_token_ids == layout.token_ids[: len(layout.token_ids) - len(tail)]
    # a segment's tokens do not depend on where it sits
    alone = prompt.pieces(tokenizer, TEMPLATE, CHUNKS[2:], room=1000)
    assert alone[0].token_ids == pieces[2].token_ids


def test_a_long_segment_is_cut_at_a_word_within_its_room(tokenizer: Tokenizer) -> None:
    long = Chunk(key=9, id="long", version=1, text="autophagy declines " * 50, title="")
    [piece] = prompt.pieces(tokenizer, TEMPLATE, [long], room=10)
    assert piece.truncated
    assert 0 < len(piece.token_ids) <= 10
    rendered = prompt.render(TEMPLATE, long)
    assert rendered.startswith(piece.text) and rendered[len(piece.text)] == " "
    assert piece.token_ids == _tokens(tokenizer, piece.text)


def test_render_replaces_placeholders_but_never_reads_text_as_a_template() -> None:
    template = ContextTemplate(chunk="<{id}|{title}> {text}", delimiter="--")
    chunk = Chunk(key=1, id="a", version=2, text="literal {title} and {id}", title="T")
    assert prompt.render(template, chunk) == "--<a|T> literal {title} and {id}"


def test_budget_is_what_the_frame_leaves(tokenizer: Tokenizer) -> None:
    _, head, _, tail = prompt.frame(tokenizer, TEMPLATE, "q")
    assert prompt.budget(100, head, tail) == 100 - len(head) - len(tail)
    assert prompt.budget(len(head) + len(tail), head, tail) == 0
    with pytest.raises(InvalidInput, match="below what the template") as refused:
        prompt.budget(len(head) + len(tail) - 1, head, tail)
    assert refused.value.field == "max_tokens"


def test_fit_keeps_the_best_ranked_that_fit(tokenizer: Tokenizer) -> None:
    sizes = [len(p.token_ids) for p in prompt.pieces(tokenizer, TEMPLATE, CHUNKS, room=1000)]
    room = sizes[0] + sizes[2]  # the second does not fit after the first; the third does
    assert sizes[1] > sizes[2]
    kept = prompt.fit(tokenizer, TEMPLATE, CHUNKS, room)
    assert [p.chunk.id for p in kept] == ["d0", "d2"]
    assert sum(len(p.token_ids) for p in kept) <= room


def test_stable_order_depends_only_on_what_was_chosen(tokenizer: Tokenizer) -> None:
    pieces = prompt.pieces(tokenizer, TEMPLATE, CHUNKS, room=1000)
    v2 = Chunk(key=7, id="d1", version=2, text="newer", title="")
    newer = prompt.pieces(tokenizer, TEMPLATE, [v2], room=1000)
    shuffled = [pieces[2], *newer, pieces[0], pieces[1]]
    assert [(p.chunk.id, p.chunk.version) for p in prompt.stable(shuffled)] == [
        ("d0", 1),
        ("d1", 1),
        ("d1", 2),
        ("d2", 1),
    ]
