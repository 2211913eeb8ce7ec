"""The view-definition splitter: only the two managed entries change, everything else is the
user's text byte for byte; what it cannot read safely it refuses (never guesses)."""

from __future__ import annotations

import pytest

from migrator.ddl.viewdef import ViewShapeError, parse_view, split_select
from migrator.plan.model import VectorType

COLS = ["id", "title", "body", "embedding", "embedding_model"]


def _parse(text: str, columns: list[str] = COLS):  # type: ignore[no-untyped-def]
    return parse_view(
        text,
        columns,
        embedding_alias="embedding",
        model_alias="embedding_model",
        managed_columns=("embedding", "embedding_v2"),
    )


def test_swaps_only_the_managed_entries_and_keeps_the_rest_verbatim() -> None:
    text = (
        " SELECT d.id, d.title, d.body, (d.embedding)::public.vector AS embedding, "
        "'fp-old'::text AS embedding_model FROM (public.documents d JOIN public.t t "
        "ON ((t.id = d.tenant))) WHERE (t.active AND (d.note <> 'a, b FROM c'::text));"
    )
    body = _parse(text)
    assert (body.qualifier, body.serves, body.fingerprint) == ("d", "embedding", "fp-old")
    out = body.render("embedding_v2", VectorType.HALFVEC, "fp-new", "embedding", "embedding_model")
    rendered = out.as_string(None)
    assert rendered == (
        ' SELECT d.id, d.title, d.body, "d"."embedding_v2"::halfvec AS "embedding", '
        "'fp-new'::text AS \"embedding_model\" FROM (public.documents d JOIN public.t t "
        "ON ((t.id = d.tenant))) WHERE (t.active AND (d.note <> 'a, b FROM c'::text))"
    )


def test_unqualified_single_table_and_quoted_names() -> None:
    cols = ["DocId", "title", "Body", "Embedding", "Embedding_Model"]
    text = (
        ' SELECT "DocId", title, "Body", ("Embedding")::vector AS "Embedding", '
        '\'fp\'::text AS "Embedding_Model" FROM "Search"."Docs" WHERE (("DocId" % 5) <> 0);'
    )
    body = parse_view(
        text,
        cols,
        embedding_alias="Embedding",
        model_alias="Embedding_Model",
        managed_columns=("Embedding", "Embedding_V2"),
    )
    assert body.qualifier is None and body.serves == "Embedding"


def test_is_distinct_from_and_functions_with_from_do_not_end_the_select_list() -> None:
    text = (
        " SELECT id, title, (body IS DISTINCT FROM title) AS body, embedding, "
        "'fp'::text AS embedding_model FROM public.documents;"
    )
    _, entries, _ = split_select(text)
    assert [e.name for e in entries] == COLS
    text2 = text.replace("(body IS DISTINCT FROM title)", '"substring"(body, 1)')
    assert [e.name for e in split_select(text2)[1]] == COLS


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("WITH x AS (SELECT 1) SELECT * FROM x", "not SELECT"),
        (
            " SELECT DISTINCT id, title, body, embedding, 'f'::text AS embedding_model FROM t",
            "DISTINCT",
        ),
        (
            " SELECT id, title, body, embedding, 'f'::text AS embedding_model FROM a "
            "UNION SELECT id, title, body, embedding, 'f'::text AS embedding_model FROM b",
            "UNION",
        ),
        (" SELECT id, title, body, embedding, 'f'::text AS embedding_model", "no FROM"),
        (
            " SELECT id, title, body, COALESCE(embedding, embedding) AS embedding, "
            "'f'::text AS embedding_model FROM t",
            "plain reference",
        ),
        (
            " SELECT id, title, body, other AS embedding, 'f'::text AS embedding_model FROM t",
            "reads other",
        ),
        (
            " SELECT id, title, body, embedding, category AS embedding_model FROM t",
            "text constant",
        ),
        (" SELECT id, title, embedding, 'f'::text AS embedding_model FROM t", "could not match"),
    ],
    ids=["cte", "distinct", "union", "no-from", "expression", "other-column", "model", "columns"],
)
def test_what_cannot_be_swapped_safely_is_refused(text: str, match: str) -> None:
    with pytest.raises(ViewShapeError, match=match):
        _parse(text)
