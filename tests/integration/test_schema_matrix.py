"""The real-world schema matrix: the whole lifecycle on the schemas teams actually have.

Each case: plan (live), adopt, backfill, abort (the catalog must equal its snapshot from
before), then again from the start: adopt, backfill with an application writing meanwhile,
verify, cutover, rollback, cutover, finalize, with a search load through the view the whole
time. After every phase: the rows each view returns are the same set (computed from the base
tables with the user's own filter), the view's owner, grants and options are unchanged, every
row with text holds the new model's vector of its current text, and after finalize no trigger
or function of migrator is left. Schemas migrator cannot migrate safely (partitioned tables,
composite keys, row-level security applying to migrator's role) are refused before any change.

One database, one embeddings server and one worker pool for the module. 1,500 rows a table:
below that the planner rightly prefers a scan to the index, and verify's index gate (which
requires the planner to use the index) cannot pass.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.db.connect import ensure_schema
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.errors import PreflightError
from migrator.plan.model import Plan
from migrator.switch import abort
from migrator.verify.run import VerifyOptions, verify
from tests.backfill_helpers import workers
from tests.catalog_helpers import catalog_snapshot, diff, view_rows
from tests.conftest import with_database
from tests.helpers import demo_plan
from tests.matrix_helpers import (
    AppWriter,
    SearchLoad,
    TableSpec,
    assert_new_vectors_fresh,
    create_table,
    deadline,
    source_index,
    view_acl,
)

pytestmark = pytest.mark.integration

REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
TAG = uuid.uuid4().hex[:8]
QUEUE = f"migrator.test-mx-{TAG}.v2"
KEY = {"MIGRATOR_LOCAL_KEY": "x"}


@dataclass
class Env:
    url: str
    settings: Settings
    server: ServerHandle


@pytest.fixture(scope="module")
def env(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    name = f"t_mx_{TAG}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    server = run_server_in_thread()
    e = dict(os.environ)
    e.update(KEY)
    e.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": REDIS,
            "MIGRATOR_HOME": str(tmp_path_factory.mktemp("mx-home")),
        }
    )
    e.pop("MIGRATOR_REDIS_URL", None)
    try:
        with workers(url, REDIS, QUEUE, n=1, concurrency=2, extra_env=KEY):
            yield Env(url, load_settings(e), server)
    finally:
        server.stop()
        with (
            psycopg.connect(pg_server, autocommit=True) as conn,
            contextlib.suppress(psycopg.Error),
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# ---- the cases --------------------------------------------------------------------------------


@dataclass
class View:
    """A view to watch: its rows (as `role`) must equal `expected` (SQL over the base tables)."""

    schema: str
    name: str
    key: str
    expected: str
    role: str | None = None

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass
class Case:
    plans: list[Plan]
    tables: list[TableSpec]
    setup: Callable[[psycopg.Connection], None]
    views: list[View]
    refused: str | None = None  # a finding of `plan`: the case is refused before any change
    after_finalize: Callable[[psycopg.Connection], None] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _plan(env: Env, name: str, t: TableSpec, **kw: Any) -> Plan:
    kw.setdefault("view__name", f"{t.name}_search")
    kw.setdefault("view__columns", [t.pk, "title", t.text])
    return demo_plan(
        env.server.url,
        name=name,
        table__schema=t.schema,
        table__name=t.name,
        table__primary_key=t.pk,
        text__column=t.text,
        source__column=t.embedding,
        backfill__queue=QUEUE,
        backfill__batch_size=500,
        verify__sample_size=50,
        # These tables have no source index (production scans exactly): this test is about
        # schemas, so an absolute floor replaces the relative gate (max_recall_drop 1 = off).
        verify__min_index_recall=0.7,
        verify__max_recall_drop=1.0,
        verify__ladder=[40],
        cutover__rollback_window_hours=0,
        **kw,
    )


def _view_sql(plan: Plan, where: str = "", frm: str | None = None, alias: str = "") -> sql.SQL:
    """The user's view: their FROM and WHERE, and the two columns migrator manages."""
    p = f"{alias}." if alias else ""
    cols = ", ".join(p + sql.Identifier(c).as_string(None) for c in plan.view.columns)
    table = sql.Identifier(plan.table.schema_, plan.table.name).as_string(None)
    fp = sql.Literal(plan.source.model.fingerprint()).as_string(None)
    src = p + sql.Identifier(plan.source.column).as_string(None)
    return sql.SQL(
        f"CREATE VIEW {sql.Identifier(plan.view_schema, plan.view.name).as_string(None)} AS "
        f"SELECT {cols}, {src}::vector AS embedding, {fp}::text AS embedding_model "
        f"FROM {frm or table} {where}"
    )


def _roles(conn: psycopg.Connection, *names: str) -> list[str]:
    out = [f"{n}_{TAG}" for n in names]
    for r in out:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(r)))
    return out


def case_where_filter(env: Env) -> Case:
    t = TableSpec(
        "m_where", "documents", 1500, extra={"deleted": ("boolean", lambda i: i % 9 == 0)}
    )
    plan = _plan(env, "mx-where", t)

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        conn.execute(_view_sql(plan, "WHERE NOT deleted"))

    v = View(
        "m_where", "documents_search", "id", "SELECT id FROM m_where.documents WHERE NOT deleted"
    )
    return Case([plan], [t], setup, [v])


def case_join(env: Env) -> Case:
    t = TableSpec("m_join", "documents", 1500, extra={"category": ("text", lambda i: f"c{i % 5}")})
    plan = _plan(env, "mx-join", t)

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        conn.execute("CREATE TABLE m_join.categories (name text PRIMARY KEY, visible boolean)")
        conn.execute(
            "INSERT INTO m_join.categories SELECT 'c' || i, i < 3 FROM generate_series(0, 4) i"
        )
        conn.execute(
            _view_sql(
                plan,
                "WHERE c.visible",
                "m_join.documents d JOIN m_join.categories c ON c.name = d.category",
                alias="d",
            )
        )

    v = View(
        "m_join",
        "documents_search",
        "id",
        "SELECT d.id FROM m_join.documents d JOIN m_join.categories c ON c.name = d.category "
        "WHERE c.visible",
    )
    return Case([plan], [t], setup, [v])


def case_security_invoker(env: Env) -> Case:
    t = TableSpec("m_inv", "documents", 1500)
    plan = _plan(env, "mx-invoker", t)
    roles: list[str] = []

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        roles.extend(_roles(conn, "inv_owner", "inv_reader"))
        owner, reader = roles
        conn.execute(_view_sql(plan, "WHERE id % 4 <> 0"))
        conn.execute("ALTER VIEW m_inv.documents_search SET (security_invoker = true)")
        for r in roles:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA m_inv TO {}").format(sql.Identifier(r)))
            conn.execute(sql.SQL("GRANT SELECT ON m_inv.documents TO {}").format(sql.Identifier(r)))
        conn.execute(
            sql.SQL("ALTER VIEW m_inv.documents_search OWNER TO {}").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON m_inv.documents_search TO {}").format(sql.Identifier(reader))
        )

    v = View("m_inv", "documents_search", "id", "SELECT id FROM m_inv.documents WHERE id % 4 <> 0")
    case = Case([plan], [t], setup, [v])
    case.notes["roles"] = roles
    return case


def case_grant_all(env: Env) -> Case:
    """PostgreSQL 17+ (MAINTAIN) with a type change: the view is dropped and re-created."""
    t = TableSpec("m_grant", "documents", 1500)
    plan = _plan(env, "mx-grant-all", t, target__type="halfvec")

    def setup(conn: psycopg.Connection) -> None:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version and int(version[0]) >= 170000, "this case needs PostgreSQL 17+"
        create_table(conn, t)
        source_index(conn, t)
        owner, admin, reader = _roles(conn, "ga_owner", "ga_admin", "ga_reader")
        for r in (owner, admin, reader):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA m_grant TO {}").format(sql.Identifier(r)))
        # The view's owner reads the table for everyone who reads the view.
        conn.execute(
            sql.SQL("GRANT SELECT ON m_grant.documents TO {}").format(sql.Identifier(owner))
        )
        conn.execute(_view_sql(plan))
        conn.execute(
            sql.SQL("ALTER VIEW m_grant.documents_search OWNER TO {}").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("GRANT ALL ON m_grant.documents_search TO {} WITH GRANT OPTION").format(
                sql.Identifier(admin)
            )
        )
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(admin)))
        conn.execute(
            sql.SQL("GRANT SELECT ON m_grant.documents_search TO {}").format(sql.Identifier(reader))
        )
        conn.execute("RESET ROLE")
        conn.execute(
            sql.SQL("GRANT SELECT (id) ON m_grant.documents_search TO {}").format(
                sql.Identifier(reader)
            )
        )

    v = View("m_grant", "documents_search", "id", "SELECT id FROM m_grant.documents")
    return Case([plan], [t], setup, [v])


def case_row_level_security(env: Env) -> Case:
    t = TableSpec("m_rls", "documents", 1500, extra={"tenant": ("int", lambda i: i % 3)})
    plan = _plan(env, "mx-rls", t)
    roles: list[str] = []

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        roles.extend(_roles(conn, "rls_reader"))
        (reader,) = roles
        conn.execute("ALTER TABLE m_rls.documents ENABLE ROW LEVEL SECURITY")
        conn.execute(
            sql.SQL(
                "CREATE POLICY tenant_one ON m_rls.documents FOR SELECT TO {} USING (tenant = 1)"
            ).format(sql.Identifier(reader))
        )
        conn.execute(_view_sql(plan))
        conn.execute("ALTER VIEW m_rls.documents_search SET (security_invoker = true)")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA m_rls TO {}").format(sql.Identifier(reader)))
        for rel in ("m_rls.documents", "m_rls.documents_search"):
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(rel), sql.Identifier(reader))
            )

    # The reader sees tenant 1 only (RLS through security_invoker); migrator sees every row.
    v_reader = View(
        "m_rls", "documents_search", "id", "SELECT id FROM m_rls.documents WHERE tenant = 1"
    )
    v_all = View("m_rls", "documents_search", "id", "SELECT id FROM m_rls.documents")
    case = Case([plan], [t], setup, [v_all, v_reader])
    case.notes["roles"] = roles
    return case


def case_mixed_case_schema(env: Env) -> Case:
    """Names PostgreSQL needs quoted: a non-public schema, mixed case everywhere."""
    t = TableSpec("Search", "Docs", 1500, pk="DocId", text="Body", embedding="Embedding")
    plan = _plan(
        env,
        "mx-mixed-case",
        t,
        target__column="Embedding_V2",
        view__name="Docs_Search",
        view__embedding_alias="Embedding",
        view__model_alias="Embedding_Model",
    )

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        conn.execute(
            sql.SQL(
                'CREATE VIEW "Search"."Docs_Search" AS SELECT "DocId", title, "Body", '
                '"Embedding"::vector AS "Embedding", {}::text AS "Embedding_Model" '
                'FROM "Search"."Docs" WHERE "DocId" % 5 <> 0'
            ).format(sql.Literal(plan.source.model.fingerprint()))
        )

    v = View(
        "Search",
        "Docs_Search",
        "DocId",
        'SELECT "DocId" FROM "Search"."Docs" WHERE "DocId" % 5 <> 0',
    )
    return Case([plan], [t], setup, [v])


def case_dependent_view(env: Env) -> Case:
    t = TableSpec("m_dep", "documents", 1500)
    plan = _plan(env, "mx-dependent", t)

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        conn.execute(_view_sql(plan))
        conn.execute(
            "CREATE VIEW m_dep.recent_search AS SELECT * FROM m_dep.documents_search WHERE id > 100"
        )

    return Case(
        [plan],
        [t],
        setup,
        [
            View("m_dep", "documents_search", "id", "SELECT id FROM m_dep.documents"),
            View("m_dep", "recent_search", "id", "SELECT id FROM m_dep.documents WHERE id > 100"),
        ],
    )


def case_two_migrations(env: Env) -> Case:
    """Two migrations at once on two tables, named alike on purpose (docs-v2, docs_v2)."""
    a = TableSpec("m_two", "docs", 1500)
    b = TableSpec("m_two", "articles", 1500, text="title_text")
    pa = _plan(env, "docs-v2", a)
    pb = _plan(env, "docs_v2", b)

    def setup(conn: psycopg.Connection) -> None:
        for t in (a, b):
            create_table(conn, t)
            source_index(conn, t)

    return Case(
        [pa, pb],
        [a, b],
        setup,
        [
            View("m_two", "docs_search", "id", "SELECT id FROM m_two.docs"),
            View("m_two", "articles_search", "id", "SELECT id FROM m_two.articles"),
        ],
    )


def case_second_vector_column(env: Env) -> Case:
    t = TableSpec(
        "m_vec2",
        "documents",
        1500,
        extra={
            "title_vec": (
                "vector(8)",
                lambda i: np.array([(i * k) % 7 + 1 for k in range(8)], dtype=np.float32),
            )
        },
    )
    plan = _plan(env, "mx-two-vectors", t, view__columns=["id", "title", "body", "title_vec"])

    def setup(conn: psycopg.Connection) -> None:
        create_table(conn, t)
        source_index(conn, t)
        conn.execute(
            "CREATE INDEX documents_title_vec_idx ON m_vec2.documents USING hnsw "
            "(title_vec vector_l2_ops)"
        )
        conn.execute(_view_sql(plan))

    def after_finalize(conn: psycopg.Connection) -> None:
        row = conn.execute(
            "SELECT count(*) FROM m_vec2.documents WHERE title_vec IS NOT NULL"
        ).fetchone()
        assert row and row[0] > 0
        assert conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'm_vec2.documents_title_vec_idx'::regclass"
        ).fetchone() == (True,)

    case = Case(
        [plan],
        [t],
        setup,
        [View("m_vec2", "documents_search", "id", "SELECT id FROM m_vec2.documents")],
    )
    case.after_finalize = after_finalize
    return case


def case_partitioned(env: Env) -> Case:
    t = TableSpec("m_part", "documents", 300, partition_by_range=True)
    plan = _plan(env, "mx-partitioned", t)
    return Case([plan], [t], lambda c: create_table(c, t), [], refused="is partitioned")


def case_composite_key(env: Env) -> Case:
    t = TableSpec("m_cpk", "documents", 300, composite_pk=True)
    plan = _plan(env, "mx-composite", t)
    return Case([plan], [t], lambda c: create_table(c, t), [], refused="single-column primary key")


CASES: dict[str, Callable[[Env], Case]] = {
    "where-filter": case_where_filter,
    "join": case_join,
    "security-invoker": case_security_invoker,
    "grant-all-pg18": case_grant_all,
    "row-level-security": case_row_level_security,
    "mixed-case-schema": case_mixed_case_schema,
    "dependent-view": case_dependent_view,
    "two-migrations": case_two_migrations,
    "second-vector-column": case_second_vector_column,
}
REFUSED: dict[str, Callable[[Env], Case]] = {
    "partitioned": case_partitioned,
    "composite-key": case_composite_key,
}


# ---- what a user checks after each phase ------------------------------------------------------


class Watch:
    """The rows every view returns (as each role), and every view's owner and grants.

    A view adopt creates exists from adopt on, and again not after abort."""

    def __init__(self, env: Env, case: Case) -> None:
        self.env, self.case = env, case
        self.preexisting = {v.name for v in case.views if _exists(env.url, v)}
        self.acl = {
            v.name: view_acl(env.url, v.schema, v.name)
            for v in case.views
            if v.name in self.preexisting
        }
        self.last: dict[tuple[str, str, str | None], set[Any]] = {}

    def check(self, phase: str, *, changed: bool = False, adopted: bool = True) -> None:
        """Same set as the user's filter gives on the base tables; same as the last check
        unless rows were written since (`changed`)."""
        role = self.case.notes.get("roles", [None])[-1]
        with psycopg.connect(self.env.url) as conn:
            for v in self.case.views:
                if v.name not in self.preexisting and not adopted:
                    assert not _exists(self.env.url, v), f"{phase}: {v.name} should not exist"
                    self.last.clear()
                    continue
                as_role = role if v.role == "reader" else None
                if as_role:
                    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(as_role)))
                expected = {r[0] for r in conn.execute(v.expected).fetchall()}  # type: ignore[call-overload]
                conn.execute("RESET ROLE")
                got = view_rows(self.env.url, v.ident, v.key, as_role)
                assert got == expected, (
                    f"{phase}: {v.schema}.{v.name} returns {len(got)} rows, its definition "
                    f"gives {len(expected)} (extra {sorted(got - expected)[:5]}, missing "
                    f"{sorted(expected - got)[:5]})"
                )
                key = (v.schema, v.name, as_role)
                if key in self.last and not changed:
                    assert got == self.last[key], f"{phase}: {v.name} changed its rows"
                self.last[key] = got
                acl = view_acl(self.env.url, v.schema, v.name)
                assert acl == self.acl.setdefault(v.name, acl), f"{phase}: owner/grants changed"


def _exists(url: str, v: View) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (v.ident.as_string(None),)).fetchone()
    return bool(row and row[0])


def _capture(url: str, case: Case) -> dict[str, list[str]]:
    """This case's change capture: triggers on its tables, functions named by its plans."""
    with psycopg.connect(url) as conn:
        trg = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(%s)",
            ([p.trigger_name for p in case.plans],),
        ).fetchall()
        fns = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'migrator' AND p.proname = ANY(%s)",
            ([p.function_name for p in case.plans],),
        ).fetchall()
    return {"triggers": sorted(r[0] for r in trg), "functions": sorted(r[0] for r in fns)}


def _backfill_all(env: Env, plans: list[Plan], *, writers: list[AppWriter] | None = None) -> None:
    """Every plan's backfill at once (threads), each until the database says complete."""
    outs: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def run(plan: Plan) -> None:
        try:
            with deadline(180) as stop:
                outs[plan.name] = backfill.run(
                    env.settings, plan, backfill.Options(poll_seconds=0.2, should_stop=stop)
                )
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in plans]
    with contextlib.ExitStack() as stack:
        for w in writers or []:
            stack.enter_context(w)
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    for name, out in outs.items():
        assert out["complete"] and out["dead_letters"] == 0, (name, out)
    for w in writers or []:
        assert not w.log.errors, w.log.errors[:3]


def _lifecycle(env: Env, case: Case) -> None:
    url = env.url
    with psycopg.connect(url, autocommit=True) as conn:
        case.setup(conn)
    for v in case.views:
        if v.expected.endswith("tenant = 1"):
            v.role = "reader"
    before = catalog_snapshot(url)
    for plan in case.plans:
        report = api.plan_live(plan, env.settings)
        assert report.ok, [f.as_dict() for f in report.findings]
    watch = Watch(env, case)
    watch.check("before adopt", adopted=False)

    # Abandon a first attempt: the catalog must come back exactly.
    for plan in case.plans:
        api.adopt(env.settings, plan)
    watch.check("adopt")
    _backfill_all(env, case.plans)
    for plan in case.plans:
        res = abort(env.settings, plan, yes=True)
        # True: the user's view is as adopt found it; None: adopt created it (now dropped).
        assert res.view_matches_snapshot is (None if res.dropped_view else True), res
    assert diff(before, catalog_snapshot(url)) == {}
    assert _capture(url, case) == {"triggers": [], "functions": []}
    watch.check("abort", adopted=False)

    # Again from the beginning, under writes and a search load.
    for plan in case.plans:
        api.adopt(env.settings, plan)
    watch.check("adopt again")
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(SearchLoad(url, plan, KEY)) for plan in case.plans]
        writers = [AppWriter(url, t, seed=i) for i, t in enumerate(case.tables)]
        _backfill_all(env, case.plans, writers=writers)
        _backfill_all(env, case.plans)  # the catch-up of the last writes
        watch.check("backfill", changed=True)
        for plan in case.plans:
            assert_new_vectors_fresh(url, plan)
            verify(env.settings, plan, VerifyOptions())
        watch.check("verify")
        for plan in case.plans:
            switch.cutover(env.settings, plan)
        watch.check("cutover")
        for plan in case.plans:
            back = switch.rollback(env.settings, plan)
            # True: exactly the user's view as adopt found it; None: adopt created it.
            assert back.view_matches_snapshot is (True if watch.preexisting else None), back
        watch.check("rollback")
        for plan in case.plans:
            switch.cutover(env.settings, plan)
        watch.check("cutover again")
        for plan in case.plans:
            switch.finalize(env.settings, plan, yes=True)
        watch.check("finalize")
    for load in loads:
        assert load.done >= 10 and load.hits > 0, (load.done, load.hits)
        assert load.failed == 0, load.errors[:3]
        assert load.mixed == 0
    assert _capture(url, case) == {"triggers": [], "functions": []}
    if case.after_finalize is not None:
        with psycopg.connect(url) as conn:
            case.after_finalize(conn)


@pytest.mark.parametrize("name", list(CASES))
def test_lifecycle_on_real_world_schemas(env: Env, name: str) -> None:
    _lifecycle(env, CASES[name](env))


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_schemas_are_refused_before_any_change(env: Env, name: str) -> None:
    case = REFUSED[name](env)
    with psycopg.connect(env.url, autocommit=True) as conn:
        case.setup(conn)
    before = catalog_snapshot(env.url)
    (plan,) = case.plans
    report = api.plan_live(plan, env.settings)
    assert not report.ok and any(case.refused in f.what for f in report.findings)  # type: ignore[operator]
    for command in (
        lambda: api.adopt(env.settings, plan),
        lambda: backfill.run(env.settings, plan, backfill.Options(wait=False)),
    ):
        with pytest.raises(PreflightError, match=case.refused):
            command()
        assert diff(before, catalog_snapshot(env.url)) == {}


def test_row_level_security_on_migrators_own_role_is_refused(env: Env) -> None:
    """FORCE ROW LEVEL SECURITY and migrator running as the (non-superuser) owner: it would
    see, backfill and verify only the rows the policy shows it."""
    t = TableSpec("m_force", "documents", 100, extra={"tenant": ("int", lambda i: i % 2)})
    app = f"app_{TAG}"
    ensure_schema(env.url)
    with psycopg.connect(env.url, autocommit=True) as conn:
        create_table(conn, t)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(app)))
        conn.execute(sql.SQL("ALTER SCHEMA m_force OWNER TO {}").format(sql.Identifier(app)))
        conn.execute(
            sql.SQL("ALTER TABLE m_force.documents OWNER TO {}").format(sql.Identifier(app))
        )
        conn.execute("ALTER TABLE m_force.documents ENABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE m_force.documents FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY even ON m_force.documents USING (tenant = 0)")
        # migrator's role can read its own schema (it would own it in a real setup).
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA migrator TO {}").format(sql.Identifier(app)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA migrator TO {}").format(
                sql.Identifier(app)
            )
        )
    app_url = env.url.replace("postgresql://postgres:", f"postgresql://{app}:", 1)
    assert app_url != env.url, "this check needs the embedded server's URL shape"
    env_vars = dict(env.settings.environ)
    env_vars["DATABASE_URL"] = app_url
    report = api.plan_live(_plan(env, "mx-force-rls", t), load_settings(env_vars))
    assert not report.ok
    assert any("row-level security applies" in f.what for f in report.findings), report.findings
