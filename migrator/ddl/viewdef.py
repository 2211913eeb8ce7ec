"""The user's search view, as PostgreSQL deparses it: split it, find the two managed columns,
and rebuild it with only those two swapped. Everything else (FROM, joins, WHERE, the other
columns) is PostgreSQL's own text, kept byte for byte.

Pure: works on the text of `pg_get_viewdef(oid)` read under `search_path = ''` (the form
pg_dump restores from: every name qualified); catalog reads live in view_catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from migrator.plan.model import VectorType

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<estr>[Ee]'(?:[^'\\]|\\.|'')*')
  | (?P<str>'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<cast>::)
  | (?P<op>[+\-*/<>=~!@#%^&|`?]+)
  | (?P<punct>[()\[\],;.:])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    def word(self) -> str | None:
        """An unquoted keyword or identifier, lower-cased; None for anything else."""
        return self.text.lower() if self.kind == "ident" else None


class ViewShapeError(ValueError):
    """The definition is not a shape migrator can swap columns in; the message says why."""


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ViewShapeError(f"unexpected character {text[pos]!r} in the view's definition")
        kind = m.lastgroup or ""
        if kind == "tag":
            kind = "dollar"
        if kind != "ws":
            out.append(Token(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return out


def ident_name(tok: Token) -> str | None:
    """The identifier a token names (quoted identifiers unescaped), or None."""
    if tok.kind == "ident":
        return tok.text.lower()
    if tok.kind == "qident":
        return tok.text[1:-1].replace('""', '"')
    return None


def string_value(tok: Token) -> str | None:
    if tok.kind == "str":
        return tok.text[1:-1].replace("''", "'")
    return None


@dataclass(frozen=True)
class Entry:
    """One item of the top-level select list: its text span, expression tokens and name."""

    start: int
    end: int
    expr: tuple[Token, ...]
    name: str | None


SIDE_ALIAS = "migrator_side"
# Words that end a FROM item (after them no alias can follow).
_AFTER_ITEM = frozenset(
    {
        *("join", "inner", "left", "right", "full", "cross", "natural", "on", "using"),
        *("where", "group", "having", "window", "order", "limit", "offset", "fetch", "for"),
        *("union", "intersect", "except", "tablesample"),
    }
)


@dataclass(frozen=True)
class TableRef:
    """Where the FROM clause names the plan's table: `schema.table [alias]` as [start, end),
    the name the query refers to it by, and (storage side_table, after cutover) the span of
    the parenthesised join to the side table that migrator added around it."""

    start: int
    end: int
    alias: str
    joined: tuple[int, int] | None = None


def find_table(text: str, schema: str, table: str, *, pk: str | None = None) -> TableRef | None:
    """The one FROM item of `schema.table` (None: not there, or named twice), with the join to
    a side table in `schema` that migrator put around it (alias migrator_side) when present."""
    toks = tokenize(text)
    found: list[TableRef] = []
    for i in range(len(toks) - 2):
        if not (toks[i + 1].text == "." and ident_name(toks[i]) == schema):
            continue
        if ident_name(toks[i + 2]) != table:
            continue
        if i > 0 and toks[i - 1].text == ".":
            continue
        end, alias, j = toks[i + 2].end, table, i + 3
        if j < len(toks) and toks[j].word() == "as":
            j += 1
        named = j < len(toks) and toks[j].kind in ("ident", "qident")
        if named and toks[j].word() not in _AFTER_ITEM:
            end, alias = toks[j].end, str(ident_name(toks[j]))
            j += 1
        joined = None if pk is None else _side_join_span(toks, i, j, schema, pk)
        found.append(TableRef(toks[i].start, end, alias, joined))
    return found[0] if len(found) == 1 else None


def _side_join_span(
    toks: list[Token], first: int, after: int, schema: str, pk: str
) -> tuple[int, int] | None:
    """`( <table item> JOIN schema.<side> migrator_side USING (pk) )`, as PostgreSQL deparses
    the join migrator adds: its span, or None."""
    want = ["join", schema, ".", None, SIDE_ALIAS, "using", "(", pk, ")", ")"]
    got = toks[after : after + len(want)]
    names = [ident_name(t) if t.kind in ("ident", "qident") else t.text for t in got]
    if first == 0 or toks[first - 1].text != "(" or len(names) != len(want):
        return None
    if any(w is not None and n != w for n, w in zip(names, want, strict=True)):
        return None
    return toks[first - 1].start, got[-1].end


@dataclass(frozen=True)
class ViewBody:
    """A view definition with its two managed columns located, ready to be rebuilt.

    `qualifier` is the name the FROM clause gives the plan's table (None when the select
    list is unqualified, i.e. the view reads one relation); `serves` is the column the
    embedding entry reads today.
    """

    text: str
    embedding: Entry
    model: Entry
    qualifier: str | None
    serves: str
    fingerprint: str | None
    table: TableRef | None = None

    @property
    def base_qualifier(self) -> str | None:
        """The name the select list gives the plan's table (None: unqualified)."""
        if self.qualifier == SIDE_ALIAS:
            return self.table.alias if self.table is not None else None
        return self.qualifier

    def render(
        self,
        column: str,
        vtype: VectorType,
        fingerprint: str,
        embedding_alias: str,
        model_alias: str,
        *,
        side_join: sql.Composable | None = None,
    ) -> sql.Composable:
        """The definition with the embedding and model entries pointing at `column`; with
        `side_join` (storage side_table, the target column) the table's FROM item joined to
        the side table, without it any such join migrator added taken out again."""
        qual = SIDE_ALIAS if side_join is not None else self.base_qualifier
        ref: sql.Composable = sql.Identifier(qual, column) if qual else sql.Identifier(column)
        managed: dict[int, tuple[int, sql.Composable]] = {}
        tref = self.table
        if side_join is not None and tref is None:
            raise ViewShapeError(
                "the view must name the table once in its FROM clause for a side table to be "
                "joined to it"
            )
        if tref is not None and tref.joined is not None:
            # Another side table's join (or this one's): replaced, or taken out.
            start, end = tref.joined
            item: sql.Composable = sql.SQL(self.text[tref.start : tref.end])
            managed[start] = (end, item if side_join is None else sql.Composed([item, side_join]))
        elif side_join is not None and tref is not None:
            managed[tref.end] = (tref.end, side_join)  # inserted right after the item
        managed |= {
            self.embedding.start: (
                self.embedding.end,
                sql.SQL("{}::{} AS {}").format(
                    ref, sql.SQL(vtype.value), sql.Identifier(embedding_alias)
                ),
            ),
            self.model.start: (
                self.model.end,
                sql.SQL("{}::text AS {}").format(
                    sql.Literal(fingerprint), sql.Identifier(model_alias)
                ),
            ),
        }
        parts: list[sql.Composable] = []
        pos = 0
        for start in sorted(managed):
            end, replacement = managed[start]
            # The user's own text between the managed entries, as PostgreSQL deparsed it.
            # sql.SQL, never .format()ed: the text is kept verbatim, braces and all.
            parts += [sql.SQL(self.text[pos:start]), replacement]
            pos = end
        parts.append(sql.SQL(self.text[pos:]))
        return sql.Composed(parts)


def split_select(text: str) -> tuple[list[Token], list[Entry], int]:
    """The tokens, the top-level select list entries, and the index of the top-level FROM."""
    toks = tokenize(text)
    while toks and toks[-1].text == ";":
        toks.pop()
    if not toks or toks[0].word() != "select":
        first = toks[0].text if toks else "nothing"
        raise ViewShapeError(f"the view's definition starts with {first!r}, not SELECT")
    if len(toks) > 1 and toks[1].word() in ("distinct", "all"):
        raise ViewShapeError("the view uses SELECT DISTINCT (no index can serve it)")
    depth = 0
    entries: list[Entry] = []
    cur: list[Token] = []
    from_at = -1
    for i, tok in enumerate(toks[1:], start=1):
        if tok.text in ("(", "["):
            depth += 1
        elif tok.text in (")", "]"):
            depth -= 1
        if depth == 0 and tok.text == ",":
            entries.append(_entry(cur))
            cur = []
            continue
        # `a IS DISTINCT FROM b` is the only top-level FROM that does not end the list.
        if depth == 0 and tok.word() == "from" and (i < 2 or toks[i - 1].word() != "distinct"):
            from_at = i
            break
        cur.append(tok)
    if from_at < 0 or not cur:
        raise ViewShapeError("the view's select list has no FROM clause")
    entries.append(_entry(cur))
    depth = 0
    for tok in toks[from_at:]:
        depth += tok.text in ("(", "[")
        depth -= tok.text in (")", "]")
        if depth == 0 and tok.word() in ("union", "intersect", "except"):
            raise ViewShapeError(f"the view combines queries with {tok.text.upper()}")
    return toks, entries, from_at


def _entry(toks: list[Token]) -> Entry:
    if not toks:
        raise ViewShapeError("the view's select list has an empty entry")
    start, end = toks[0].start, toks[-1].end
    if len(toks) >= 3 and toks[-2].word() == "as":
        return Entry(start, end, tuple(toks[:-2]), ident_name(toks[-1]))
    # PostgreSQL writes AS for every entry except a plain column named like its column.
    return Entry(start, end, tuple(toks), ident_name(toks[-1]))


def _column_ref(expr: tuple[Token, ...]) -> tuple[str | None, str, str | None]:
    """(qualifier, column, cast type) of `[(][q.]col[)][::[schema.]type]`, else ViewShapeError."""
    toks = list(expr)
    cast: str | None = None
    if len(toks) >= 2 and toks[-2].kind == "cast":
        cast, toks = ident_name(toks[-1]), toks[:-2]
    elif len(toks) >= 4 and toks[-4].kind == "cast" and toks[-2].text == ".":
        cast, toks = ident_name(toks[-1]), toks[:-4]
    if len(toks) >= 3 and toks[0].text == "(" and toks[-1].text == ")":
        toks = toks[1:-1]
    names = [ident_name(t) for t in toks[::2]]
    dots = all(t.text == "." for t in toks[1::2])
    if not dots or None in names or len(names) not in (1, 2) or len(toks) % 2 == 0:
        raise ViewShapeError("")
    if len(names) == 2:
        return names[0], str(names[1]), cast
    return None, str(names[0]), cast


def _constant(expr: tuple[Token, ...]) -> str:
    toks = list(expr)
    if len(toks) == 3 and toks[1].kind == "cast" and ident_name(toks[2]) == "text":
        toks = toks[:1]
    value = string_value(toks[0]) if len(toks) == 1 else None
    if value is None:
        raise ViewShapeError("")
    return value


def parse_view(
    text: str,
    columns: list[str],
    *,
    embedding_alias: str,
    model_alias: str,
    managed_columns: tuple[str, ...],
    table: tuple[str, str] | None = None,
    pk: str | None = None,
) -> ViewBody:
    """Locate the managed entries of a deparsed view whose output columns are `columns`.

    The split is checked against the catalog: as many entries as the view has columns, each
    named as the catalog names it. The embedding entry must read one of `managed_columns`
    (the plan's source or target column, optionally cast to a vector type); the model
    entry must be a text constant. Anything else raises ViewShapeError saying what it found.
    """
    _, entries, _ = split_select(text)
    names = [e.name for e in entries]
    if names != columns:
        raise ViewShapeError(
            f"could not match the view's select list to its columns {columns} (read {names})"
        )
    emb = entries[columns.index(embedding_alias)]
    mod = entries[columns.index(model_alias)]
    emb_text = text[emb.start : emb.end]
    try:
        qualifier, column, cast = _column_ref(emb.expr)
    except ViewShapeError:
        raise ViewShapeError(
            f"its {embedding_alias} column is `{emb_text}`: migrator swaps a plain reference "
            f"to the table's vector column (e.g. `d.{managed_columns[0]}::vector AS "
            f"{embedding_alias}`)"
        ) from None
    if column not in managed_columns:
        raise ViewShapeError(
            f"its {embedding_alias} column reads {column}, not {' or '.join(managed_columns)}"
        )
    if cast is not None and cast not in {v.value for v in VectorType}:
        raise ViewShapeError(f"its {embedding_alias} column is cast to {cast}, not a vector type")
    mod_text = text[mod.start : mod.end]
    try:
        fingerprint = _constant(mod.expr)
    except ViewShapeError:
        raise ViewShapeError(
            f"its {model_alias} column is `{mod_text}`: migrator manages a text constant "
            f"holding the model's fingerprint (`'<fingerprint>'::text AS {model_alias}`)"
        ) from None
    body = text.rstrip().rstrip(";")
    tref = None
    if table is not None:
        tref = find_table(body, table[0], table[1], pk=pk)
    return ViewBody(body, emb, mod, qualifier, column, fingerprint, tref)
