"""The user's own search view through adopt, cutover and rollback: its filter, joins, options,
owner and every grant stay exactly as they were; only the two managed columns move.

Before the fix adopt ran `CREATE OR REPLACE VIEW ... SELECT cols FROM table` over any view
whose column names matched: a `WHERE NOT deleted` view lost its filter (soft-deleted rows
became searchable), and on PostgreSQL 17+ a `GRANT ALL` on the view (MAINTAIN) crashed the
cutover of a type-changing plan with a raw ValueError.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from migrator import api, switch
from migrator.config import Settings
from migrator.embedding.local import HashEmbedder
from migrator.errors import PreflightError
from migrator.plan.model import Plan
from tests.catalog_helpers import catalog_snapshot, diff, view_rows
from tests.helpers import create_documents
from tests.switch_helpers import explain_view, migrated_state, switch_plan, view_catalog

pytestmark = pytest.mark.integration
VIEW = sql.Identifier("public", "documents_search")


def _fp(plan: Plan) -> sql.Literal:
    return sql.Literal(plan.source.model.fingerprint())


def _soft_delete(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE documents ADD COLUMN deleted boolean NOT NULL DEFAULT false")
    conn.execute("UPDATE documents SET deleted = true WHERE id % 10 = 0")


def _filtered_view(plan: Plan) -> Callable[[psycopg.Connection], None]:
    def make(conn: psycopg.Connection) -> None:
        _soft_delete(conn)
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search AS SELECT id, title, body, embedding::vector AS "
                "embedding, {}::text AS embedding_model FROM documents WHERE NOT deleted"
            ).format(_fp(plan))
        )

    return make


def _joined_view(plan: Plan) -> Callable[[psycopg.Connection], None]:
    def make(conn: psycopg.Connection) -> None:
        conn.execute(
            "CREATE TABLE categories AS SELECT DISTINCT category AS name, "
            "md5(category) < '8' AS visible FROM documents"
        )
        conn.execute("ALTER TABLE categories ADD PRIMARY KEY (name)")
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search AS SELECT d.id, d.title, d.body, "
                "d.embedding::vector AS embedding, {}::text AS embedding_model "
                "FROM documents d JOIN categories c ON c.name = d.category WHERE c.visible"
            ).format(_fp(plan))
        )

    return make


def _ids(url: str, where: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(f"SELECT d.id FROM documents d {where}").fetchall()}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_filtered_view, "WHERE NOT d.deleted"),
        (_joined_view, "JOIN categories c ON c.name = d.category WHERE c.visible"),
    ],
    ids=["where-filter", "join"],
)
def test_the_views_filter_survives_adopt_cutover_and_rollback(
    settings: Settings,
    database_url: str,
    make: Callable[[Plan], Callable[[psycopg.Connection], None]],
    expected: str,
) -> None:
    plan = switch_plan()
    snaps: dict[str, dict[str, object]] = {}

    def before_adopt(conn: psycopg.Connection) -> None:
        make(plan)(conn)
        snaps["view"] = view_catalog(database_url, plan)

    migrated_state(settings, plan, 1200, before_adopt=before_adopt)
    visible = _ids(database_url, expected)
    assert 0 < len(visible) < 1200
    assert view_catalog(database_url, plan) == snaps["view"]  # adopt changed nothing
    assert view_rows(database_url, VIEW) == visible
    old = HashEmbedder(plan.source.model.name, 256).encode(["bytes written"])[0]
    new = HashEmbedder(plan.target.model.name, 384).encode(["bytes written"])[0]
    if "JOIN" not in expected:
        assert "documents_embedding_hnsw_idx" in explain_view(
            database_url, plan, old, plan.source.model.fingerprint(), seqscan=False
        )

    switch.cutover(settings, plan)
    assert view_rows(database_url, VIEW) == visible  # the filter still applies
    cut = view_catalog(database_url, plan)
    assert "embedding_v2" in str(cut["definition"])
    for part in ("categories", "visible") if "JOIN" in expected else ("deleted",):
        assert part in str(cut["definition"])
    if "JOIN" not in expected:
        # The HNSW index on the new column serves ORDER BY through the filtered view as the
        # old one did (asked with seq scans off: 1,200 rows are cheaper to sort).
        assert "documents_embedding_v2_hnsw_idx" in explain_view(
            database_url, plan, new, plan.target.model.fingerprint(), seqscan=False
        )

    back = switch.rollback(settings, plan)
    assert back.view_matches_snapshot is True
    assert view_catalog(database_url, plan) == snaps["view"]
    assert view_rows(database_url, VIEW) == visible


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        (
            "SELECT s.id, s.title, s.body, s.embedding::vector AS embedding, {fp}::text AS "
            "embedding_model FROM (SELECT * FROM documents WHERE id > 10) s",
            "does not read",
        ),
        (
            "SELECT id, title, body, embedding::vector AS embedding, category AS "
            "embedding_model FROM documents",
            "text constant",
        ),
        (
            "SELECT id, title, body, coalesce(embedding, embedding)::vector AS embedding, "
            "{fp}::text AS embedding_model FROM documents",
            "plain reference",
        ),
        (
            "SELECT id, title, body, embedding::vector AS embedding, 'another-model'::text AS "
            "embedding_model FROM documents",
            "fingerprint",
        ),
    ],
    ids=["subquery", "model-not-constant", "expression", "other-fingerprint"],
)
def test_a_view_migrator_cannot_swap_safely_is_refused_before_any_change(
    settings: Settings, database_url: str, definition: str, problem: str
) -> None:
    plan = switch_plan()
    create_documents(database_url, 50)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE VIEW documents_search AS " + definition).format(fp=_fp(plan)))
    before = catalog_snapshot(database_url)
    with pytest.raises(PreflightError, match=problem):
        api.adopt(settings, plan)
    assert diff(before, catalog_snapshot(database_url)) == {}
    report = api.plan_live(plan, settings)
    assert not report.ok and any(problem in f.what for f in report.findings)


def _roles(url: str, tag: str, *names: str) -> list[str]:
    """Roles are global to the server: a tag keeps tests from sharing them."""
    roles = [f"{n}_{tag}" for n in names]
    with psycopg.connect(url, autocommit=True) as conn:
        for r in roles:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(r)))
    return roles


def test_grant_all_with_grant_option_and_column_grants_survive_a_type_change(
    settings: Settings, database_url: str
) -> None:
    """PostgreSQL 17+: GRANT ALL includes MAINTAIN; vector -> halfvec drops and re-creates the
    view, which must come back with every privilege, grant option, grantor and column grant."""
    plan = switch_plan(target__type="halfvec")
    tag = uuid.uuid4().hex[:8]
    owner, admin, reader, col_reader = _roles(database_url, tag, "own", "adm", "rd", "col")

    def before_adopt(conn: psycopg.Connection) -> None:
        # security_invoker: readers need the table's privilege as well as the view's.
        for role in (owner, col_reader):
            conn.execute(sql.SQL("GRANT SELECT ON documents TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search WITH (security_invoker = true) AS SELECT id, "
                "title, body, embedding::vector AS embedding, {}::text AS embedding_model "
                "FROM documents WHERE id % 3 <> 0"
            ).format(_fp(plan))
        )
        conn.execute(sql.SQL("COMMENT ON VIEW documents_search IS 'the search view'"))
        conn.execute(
            sql.SQL("ALTER VIEW documents_search OWNER TO {}").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("GRANT ALL ON documents_search TO {} WITH GRANT OPTION").format(
                sql.Identifier(admin)
            )
        )
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(admin)))
        conn.execute(
            sql.SQL("GRANT SELECT ON documents_search TO {}").format(sql.Identifier(reader))
        )
        conn.execute("RESET ROLE")
        conn.execute(
            sql.SQL("GRANT SELECT (id, title) ON documents_search TO {}").format(
                sql.Identifier(col_reader)
            )
        )

    migrated_state(settings, plan, 600, before_adopt=before_adopt)
    before = view_catalog(database_url, plan)
    assert any("/" + admin in a for a in before["acl"])  # a grant made by the admin role
    assert any("m" in a.split("=")[1].split("/")[0] for a in before["acl"] if admin in a), before
    rows = view_rows(database_url, VIEW)

    cut = switch.cutover(settings, plan)
    assert cut.phase_after == "cut_over"
    after = view_catalog(database_url, plan)
    assert after["column_types"][3] == "halfvec"
    assert {k: after[k] for k in ("reloptions", "owner", "acl", "column_acl", "comment")} == {
        k: before[k] for k in ("reloptions", "owner", "acl", "column_acl", "comment")
    }
    assert view_rows(database_url, VIEW) == rows
    with contextlib.closing(psycopg.connect(database_url)) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(col_reader)))
        assert conn.execute("SELECT count(id) FROM documents_search").fetchone() == (len(rows),)

    back = switch.rollback(settings, plan)
    assert back.view_matches_snapshot is True
    assert view_catalog(database_url, plan) == before


def test_a_type_change_under_a_dependent_view_is_refused_at_adopt(
    settings: Settings, database_url: str
) -> None:
    """vector -> halfvec must drop the view, which would drop (or fail on) views built on it:
    refused before the migration starts, not hours later at cutover."""
    plan = switch_plan(target__type="halfvec")
    create_documents(database_url, 50)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search AS SELECT id, title, body, embedding::vector AS "
                "embedding, {}::text AS embedding_model FROM documents"
            ).format(_fp(plan))
        )
        conn.execute("CREATE VIEW recent_search AS SELECT * FROM documents_search WHERE id > 10")
    before = catalog_snapshot(database_url)
    with pytest.raises(PreflightError, match="recent_search"):
        api.adopt(settings, plan)
    assert diff(before, catalog_snapshot(database_url)) == {}
