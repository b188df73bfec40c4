"""Building a context: retrieved chunks → ordered, budgeted, tokenized, hashed, registered."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from unidb.errors import InvalidInput
from unidb.indexing.pg import Connection
from unidb.models import (
    ContextRequest,
    ContextResponse,
    ContextSegment,
    ContextSession,
)
from unidb.service.auth.tenancy import DEFAULT_TENANT, current_tenant
from unidb.service.context.hashing import BlockHasher, event_key
from unidb.service.context.kv_events import Residency
from unidb.service.context.prompt import Chunk, Layout, Piece, budget, fit, frame, pieces, stable
from unidb.service.context.registry import Sent, candidates, load_session, register, save_session
from unidb.service.context.tokenizer import Tokenizers
from unidb.service.store import catalog


@dataclass(frozen=True, slots=True)
class SessionTurn:
    ordered: list[Piece]
    reset: bool
    dropped: list[str]


def load_chunks(
    conn: Connection, collection_id: int, *, keys: Sequence[int], ids: Sequence[str]
) -> list[Chunk]:
    """The current rows of the documents named by ``keys`` or ``ids``, in one read (a
    deleted one is simply absent)."""
    rows = conn.execute(
        "SELECT key, id, version, text, coalesce(metadata->>'title', '') FROM unidb.documents"
        " WHERE collection_id = %s AND (key = ANY(%s) OR id = ANY(%s))",
        (collection_id, list(keys), list(ids)),
    ).fetchall()
    return [Chunk(*row) for row in rows]


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def reuse_order(chosen: Sequence[Piece], sent: Sequence[Sent], resident: set[bytes]) -> list[Piece]:
    """The longest run of an already-sent sequence made only of ``chosen`` chunks (resident
    blocks first), then the rest in stable order."""
    by_member = {(p.chunk.key, p.chunk.version): p for p in chosen}
    best: list[Piece] = []
    best_rank = (0, 0, 0)
    for prefix in sent:
        run: list[Piece] = []
        for member in prefix.members:
            piece = by_member.get(member)
            if piece is None:
                break
            run.append(piece)
        warm = sum(1 for h in prefix.block_hashes if h in resident)
        rank = (min(warm, len(run)) if run else 0, len(run), prefix.hits)
        if rank > best_rank:
            best, best_rank = run, rank
    return then_stable(best, chosen)


@dataclass(frozen=True, slots=True)
class Passage:
    """A span of a document's text, and that text as the span was read from."""

    start: int
    end: int
    text: str


def _as_passage(chunk: Chunk, passage: Passage | None) -> Chunk:
    """``chunk`` cut to ``passage``, unless its text changed since the passage was read."""
    if passage is None or passage.text != chunk.text:
        return chunk
    return replace(chunk, text=chunk.text[passage.start : passage.end])


def then_stable(first: Sequence[Piece], chosen: Sequence[Piece]) -> list[Piece]:
    """``first``, then the rest of ``chosen`` in stable order."""
    taken = {id(p) for p in first}
    return [*first, *stable([p for p in chosen if id(p) not in taken])]


# block hashes one request may compute walking what an engine holds (about 10 ms of hashing)
WALK_HASH_BUDGET = 4096


class ContextBuilder:
    """Turns ranked document ids into a `ContextResponse` (see `ContextRequest`).

    A request without ``max_tokens`` gets ``default_max_tokens``; none may ask for more than
    ``max_tokens_limit``. The registry keeps ``prefixes_per_tenant`` prefixes and
    ``sessions_per_tenant`` sessions per tenant.

    With ``follows_engines``, the KV events of the engines say what they hold, and the
    layout follows it: ``order="reuse"`` first walks the chunks whose blocks an engine
    holds right after the prompt's head, and a session whose grown prompt would cost more
    prefill than a compact one of this turn's chunks (its earlier prefix was evicted)
    starts the compact one."""

    def __init__(
        self,
        tokenizers: Tokenizers,
        hasher: BlockHasher,
        residency: Residency,
        *,
        default_max_tokens: int = 8192,
        max_tokens_limit: int = 131_072,
        prefixes_per_tenant: int = 10_000,
        sessions_per_tenant: int = 10_000,
        follows_engines: bool = False,
    ) -> None:
        if default_max_tokens > max_tokens_limit:
            raise ValueError(
                f"the default max_tokens {default_max_tokens} (UNIDB_CONTEXT_MAX_TOKENS) is "
                f"over the limit {max_tokens_limit} (UNIDB_CONTEXT_MAX_TOKENS_LIMIT)"
            )
        self.tokenizers = tokenizers
        self.hasher = hasher
        self.residency = residency
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.prefixes_per_tenant = prefixes_per_tenant
        self.sessions_per_tenant = sessions_per_tenant
        # with engines followed, layouts go by what they hold now (see `_walk_resident`)
        self.follows_engines = follows_engines

    def max_tokens(self, request: ContextRequest) -> int:
        """The request's prompt budget; a 400 past the limit."""
        if request.max_tokens is None:
            return self.default_max_tokens
        if request.max_tokens > self.max_tokens_limit:
            raise InvalidInput(
                f"max_tokens is {request.max_tokens}, over the limit of {self.max_tokens_limit}"
                " (UNIDB_CONTEXT_MAX_TOKENS_LIMIT)",
                field="max_tokens",
            )
        return request.max_tokens

    def shape(self, row: catalog.CollectionRow, request: ContextRequest) -> str:
        return _digest(
            current_tenant.get(),
            row.id,
            request.tokenizer,
            request.template.model_dump(),
            request.block_size,
            self.hasher.algo,
            self.hasher.seed,
            self.hasher.salt_style,
            request.salt,
        )

    def build(
        self,
        conn: Connection,
        row: catalog.CollectionRow,
        request: ContextRequest,
        ranked_ids: Sequence[str],
        passages: Mapping[str, Passage] | None = None,
    ) -> ContextResponse:
        """Lay the ranked documents out. ``passages``: a chunked collection's hits' best
        passage, by id (the hit's document as it was read), laid out instead of the whole
        document wherever the document still reads so."""
        assert request.tokenizer is not None  # the service names the default
        tokenizer = self.tokenizers.get(request.tokenizer)
        head_text, head, tail_text, tail = frame(tokenizer, request.template, request.query)
        room = budget(self.max_tokens(request), head, tail)
        shape = self.shape(row, request)

        previous: list[int] = []
        if request.session is not None:
            session = load_session(
                conn,
                tenant=current_tenant.get(),
                session=request.session,
                collection_id=row.id,
                shape=shape,
            )
            previous = session.document_keys if session else []
        found = load_chunks(conn, row.id, keys=previous, ids=ranked_ids)
        current = {chunk.key: chunk for chunk in found}
        by_id = {chunk.id: chunk for chunk in found}
        ranked = [by_id[i] for i in ranked_ids if i in by_id]
        if passages:
            ranked = [_as_passage(chunk, passages.get(chunk.id)) for chunk in ranked]

        salt = tenant_salt(conn, request.salt)
        turn: SessionTurn | None = None
        if request.session is not None:
            ranked_pieces = pieces(tokenizer, request.template, ranked, room)
            turn = self._grow(tokenizer, request, previous, current, ranked_pieces, room)
            if self.follows_engines and previous:
                turn = self._compact_if_cheaper(
                    turn, previous, current, ranked_pieces, room, head, tail, request, salt
                )
            ordered = turn.ordered
        else:
            chosen = fit(tokenizer, request.template, ranked, room)
            if request.order == "relevance":
                ordered = chosen
            else:
                ordered = self._reuse_order(conn, row, shape, head, chosen, request, salt)

        layout = Layout(head, ordered, tail, head_text, tail_text)
        return self._respond(conn, row, request, shape, layout, turn, salt)

    def _reuse_order(
        self,
        conn: Connection,
        row: catalog.CollectionRow,
        shape: str,
        head: list[int],
        chosen: list[Piece],
        request: ContextRequest,
        salt: str | None,
    ) -> list[Piece]:
        """What an engine holds after the head first; failing that, the registry's best
        guess at what was sent (see `reuse_order`)."""
        if self.follows_engines:
            walked = self._walk_resident(head, chosen, block_size=request.block_size, salt=salt)
            if walked:
                return then_stable(walked, chosen)
        sent = candidates(
            conn, collection_id=row.id, shape=shape, first_keys=[p.chunk.key for p in chosen]
        )
        return reuse_order(chosen, sent, self._resident(sent))

    def _resident(self, sent: Sequence[Sent]) -> set[bytes]:
        keys = {h: event_key(h) for prefix in sent for h in prefix.block_hashes}
        held = self.residency.held(keys.values())
        return {h for h, key in keys.items() if key in held}

    def _walk_resident(
        self, head: list[int], chosen: Sequence[Piece], *, block_size: int, salt: str | None
    ) -> list[Piece]:
        """Chunks in the order one engine's cached blocks spell out after ``head``: at each
        step the chunk whose next blocks it holds the furthest, until none is held; the
        engine whose walk holds the most blocks wins.

        The prefix cache is a tree of blocks, and this walks it: a candidate is hashed one
        block at a time and only while its blocks are held, so a step costs about one hash
        per chunk; and a request hashes at most `WALK_HASH_BUDGET` blocks in all, whatever
        its chunks hold."""
        budget = [WALK_HASH_BUDGET]
        best: tuple[int, list[Piece]] = (0, [])
        for engine in self.residency.engines():
            held, walked = self._walk_engine(engine, head, chosen, block_size, salt, budget)
            if walked and held > best[0]:
                best = (held, walked)
        return best[1]

    def _walk_engine(
        self,
        engine: str,
        head: list[int],
        chosen: Sequence[Piece],
        block_size: int,
        salt: str | None,
        budget: list[int],
    ) -> tuple[int, list[Piece]]:
        def holds(block: bytes) -> bool:
            return bool(self.residency.held_by(engine, [event_key(block)]))

        hashes = self.hasher.chain(head, block_size=block_size, salt=salt)
        budget[0] -= len(hashes)
        if not all(holds(h) for h in hashes):
            return 0, []  # not even the head is held: this engine has not seen the shape
        laid, parent, held_blocks = list(head), (hashes[-1] if hashes else None), len(hashes)
        left, walked = list(chosen), []
        while left and budget[0] > 0:
            partial = laid[len(laid) // block_size * block_size :]
            best: tuple[int, bool, Piece, bytes | None] | None = None
            for piece in left:
                tokens = partial + piece.token_ids
                whole = len(tokens) // block_size
                held, last = 0, parent
                while held < whole and budget[0] > 0:
                    start = held * block_size
                    # with no parent this is the prompt's block 0 (the head holds no whole
                    # block), which carries the salt
                    [block] = self.hasher.chain(tokens[start : start + block_size],
                                                block_size=block_size, salt=salt,
                                                parent=last)  # fmt: skip
                    budget[0] -= 1
                    if not holds(block):
                        break
                    held, last = held + 1, block
                rank = (held, held == whole)
                if held and (best is None or rank > best[:2]):
                    best = (held, held == whole, piece, last)
            if best is None:
                break
            held, whole_piece, piece, parent = best
            walked.append(piece)
            left.remove(piece)
            laid += piece.token_ids
            held_blocks += held
            if not whole_piece:
                break  # the cached run ends inside this chunk
        return held_blocks, walked

    def _cached(
        self,
        token_ids: list[int],
        block_size: int,
        salt: str | None,
        hashes: Sequence[bytes] | None = None,
    ) -> dict[str, int]:
        """Per engine, the leading tokens of a prompt it would find cached: by block keys
        and, where its events carry tokens, by content (right even when the engine's hash
        settings or block size are not the request's); at most one block fewer than the
        prompt holds whole, as vLLM caps a hit (an engine computes the last token)."""
        if hashes is None:
            hashes = self.hasher.chain(token_ids, block_size=block_size, salt=salt)
        keys = [event_key(h) for h in hashes]
        most_blocks = max(len(token_ids) - 1, 0) // block_size
        cached = {
            engine: min(blocks, most_blocks) * block_size
            for engine, blocks in self.residency.resident_blocks(keys).items()
        }
        for engine, tokens in self.residency.resident_tokens(token_ids, salt).items():
            cached[engine] = max(cached.get(engine, 0), tokens)
        return cached

    def _prefill(
        self, head: list[int], ordered: Sequence[Piece], tail: list[int], block_size: int,
        salt: str | None,
    ) -> int:  # fmt: skip
        """The tokens an engine would compute for this layout, by what it holds now."""
        tokens = head + [t for p in ordered for t in p.token_ids] + tail
        return len(tokens) - max(self._cached(tokens, block_size, salt).values(), default=0)

    def _compact_if_cheaper(
        self,
        grown: SessionTurn,
        previous: list[int],
        current: dict[int, Chunk],
        ranked: list[Piece],
        room: int,
        head: list[int],
        tail: list[int],
        request: ContextRequest,
        salt: str | None,
    ) -> SessionTurn:
        """The grown turn, unless a compact prefix of this turn's chunks alone (what an
        engine holds after the head first, the rest in stable order) costs less prefill
        now: a grown prompt whose earlier part the engine evicted is prefilled again in
        full, earlier chunks and all.

        Only on evidence: every engine heard from is followed from its first event with
        none missed (a block residency lacks is then truly gone), and the compact prompt
        saves more than a block (a grown one re-prefills the partial block its earlier
        part ends in, and growing keeps the next turns' reuse). A turn that retrieved
        nothing keeps the session as it is."""
        if not self.residency.knows_all():
            return grown
        chosen: list[Piece] = []
        left = room
        for piece in ranked:
            if len(piece.token_ids) <= left:
                chosen.append(piece)
                left -= len(piece.token_ids)
        if not chosen:
            return grown
        walked = self._walk_resident(head, chosen, block_size=request.block_size, salt=salt)
        compact = then_stable(walked, chosen)
        size = request.block_size
        prefill_compact = self._prefill(head, compact, tail, size, salt)
        if prefill_compact + size >= self._prefill(head, grown.ordered, tail, size, salt):
            return grown
        kept = {p.chunk.key for p in compact}
        dropped = [current[k].id for k in previous if k in current and k not in kept]
        return SessionTurn(compact, True, dropped)

    def _grow(
        self,
        tokenizer: Any,
        request: ContextRequest,
        previous: list[int],
        current: dict[int, Chunk],
        ranked: list[Piece],
        room: int,
    ) -> SessionTurn:
        """Earlier chunks keep their place (at their current version; deleted ones leave),
        new ones are appended in rank order. Past the budget the session starts a new
        prefix: the oldest chunks this turn did not retrieve leave until it fits in half
        the budget, so the next turns can grow before another reset; if this turn's own
        chunks are still too many, the oldest of them leave too."""
        # chunks this turn retrieved again are tokenized already
        tokenized = {p.chunk.key: p for p in ranked}
        missing = [current[k] for k in previous if k in current and k not in tokenized]
        tokenized |= {p.chunk.key: p for p in pieces(tokenizer, request.template, missing, room)}
        kept = [tokenized[k] for k in previous if k in tokenized]
        known = {p.chunk.key for p in kept}
        ordered = kept + [p for p in ranked if p.chunk.key not in known]
        # earlier chunks past what one request tokenizes (see prompt.TOKENIZED_ROOMS) leave
        dropped = [current[k].id for k in previous if k in current and k not in tokenized]
        total = sum(len(p.token_ids) for p in ordered)
        if total > room:
            retrieved = {p.chunk.key for p in ranked}
            for piece in list(ordered):
                if total <= room // 2:
                    break
                if piece.chunk.key not in retrieved:
                    ordered.remove(piece)
                    dropped.append(piece.chunk.id)
                    total -= len(piece.token_ids)
            while ordered and total > room:
                piece = ordered.pop(0)
                dropped.append(piece.chunk.id)
                total -= len(piece.token_ids)
        return SessionTurn(ordered, bool(dropped), dropped)

    def _respond(
        self,
        conn: Connection,
        row: catalog.CollectionRow,
        request: ContextRequest,
        shape: str,
        layout: Layout,
        turn: SessionTurn | None,
        salt: str | None,
    ) -> ContextResponse:
        prefix_tokens = layout.prefix_token_ids
        token_ids = layout.token_ids
        block_hashes = self.hasher.chain(token_ids, block_size=request.block_size, salt=salt)
        prefix_blocks = len(prefix_tokens) // request.block_size
        members = [(p.chunk.key, p.chunk.id, p.chunk.version) for p in layout.pieces]
        # a cut segment's tokens depend on where it was cut, so its length names it too
        prefix_key = _digest(
            shape,
            [
                (p.chunk.key, p.chunk.version, len(p.token_ids))
                if p.truncated
                else (p.chunk.key, p.chunk.version)
                for p in layout.pieces
            ],
        )
        register(
            conn,
            prefix_key=prefix_key,
            tenant=current_tenant.get(),
            collection_id=row.id,
            shape=shape,
            members=members,
            token_ids=prefix_tokens,
            block_hashes=block_hashes[:prefix_blocks],
            cache_salt=salt,
            max_per_tenant=self.prefixes_per_tenant,
        )

        segments = []
        position = len(layout.head)
        for piece in layout.pieces:
            own = self.hasher.chain(piece.token_ids, block_size=request.block_size, salt=salt)
            end = position + len(piece.token_ids)
            segments.append(
                ContextSegment(
                    id=piece.chunk.id,
                    version=piece.chunk.version,
                    text=piece.text,
                    start_token=position,
                    end_token=end,
                    block_hashes=[h.hex() for h in own],
                    truncated=piece.truncated,
                )
            )
            position = end

        session = None
        if turn is not None and request.session is not None:
            number = save_session(
                conn,
                tenant=current_tenant.get(),
                session=request.session,
                collection_id=row.id,
                shape=shape,
                document_keys=[p.chunk.key for p in turn.ordered],
                max_per_tenant=self.sessions_per_tenant,
            )
            session = ContextSession(
                id=request.session, turn=number, reset=turn.reset, dropped=turn.dropped
            )

        block_keys = [event_key(h) for h in block_hashes]
        resident = self._cached(token_ids, request.block_size, salt, block_hashes)
        best = max(resident.items(), key=lambda item: (item[1], item[0]), default=None)
        return ContextResponse(
            prompt=layout.prompt,
            prefix_key=prefix_key,
            prefix_tokens=len(prefix_tokens),
            segments=segments,
            token_ids=token_ids,
            block_hashes=[h.hex() for h in block_hashes],
            block_keys=block_keys,
            cache_salt=salt,
            cached_tokens=best[1] if best else 0,
            cached_tokens_by_engine=resident,
            engine_hint=best[0] if best and best[1] > 0 else None,
            session=session,
        )


def tenant_salt(conn: Connection, salt: str | None) -> str | None:
    """The engine cache salt for the current tenant: its secret, then the caller's ``salt``.

    The default tenant has no secret, so a single-tenant install's salts stay as sent."""
    tenant = current_tenant.get()
    if tenant == DEFAULT_TENANT:
        return salt
    read = "SELECT kv_salt FROM unidb.tenant_secrets"  # row-level security: this tenant's
    row = conn.execute(read).fetchone()
    if row is None:  # the tenant's first context: make its secret (once, if two race)
        conn.execute(
            "INSERT INTO unidb.tenant_secrets (kv_salt) VALUES (%s) ON CONFLICT DO NOTHING",
            (secrets.token_hex(16),),
        )
        row = conn.execute(read).fetchone()
        assert row is not None
    secret: str = row[0]
    return f"{secret}:{salt}" if salt else secret
