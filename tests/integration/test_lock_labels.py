"""The lock each statement's dry run announces is the lock PostgreSQL takes.

Every transactional statement of adopt, expand (both ways), abort, cutover and finalize runs
in a transaction of its own; before it commits, pg_locks says the strongest lock it holds on
the labelled relation. `DROP TRIGGER` was labelled SHARE ROW EXCLUSIVE; it takes ACCESS
EXCLUSIVE (CREATE TRIGGER is the one that takes SHARE ROW EXCLUSIVE).
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest

from migrator.db.connect import connect, ensure_schema
from migrator.ddl import statements as q
from migrator.ddl import steps
from migrator.ddl.statements import Lock, Statement
from tests.helpers import create_documents
from tests.switch_helpers import switch_plan

pytestmark = pytest.mark.integration

_MODE = {
    "AccessShareLock": Lock.ACCESS_SHARE,
    "RowExclusiveLock": Lock.ROW_EXCLUSIVE,
    "ShareUpdateExclusiveLock": Lock.SHARE_UPDATE_EXCLUSIVE,
    "ShareRowExclusiveLock": Lock.SHARE_ROW_EXCLUSIVE,
    "AccessExclusiveLock": Lock.ACCESS_EXCLUSIVE,
}
_ORDER = list(_MODE.values())


def _oid(conn: psycopg.Connection, relation: str) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)::oid", (relation,)).fetchone()
    return row[0] if row else None


def _strongest(conn: psycopg.Connection, oid: int | None) -> Lock | None:
    rows = conn.execute(
        "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND granted "
        "AND locktype = 'relation' AND relation = %s",
        (oid,),
    ).fetchall()
    held = [_MODE[r[0]] for r in rows if r[0] in _MODE]
    return max(held, key=_ORDER.index) if held else None


def _run_checked(conn: psycopg.Connection, stmts: tuple[Statement, ...], seen: list[str]) -> None:
    for st in stmts:
        if not st.transactional:
            conn.execute(st.query)  # type: ignore[call-overload]
            continue
        with conn.transaction():
            oid = _oid(conn, st.lock_on) if st.lock_on else None  # before a DROP removes it
            conn.execute(st.query)  # type: ignore[call-overload]
            if st.lock in (Lock.NONE,) or not st.lock_on or st.lock_on.startswith("migrator."):
                continue
            # A CREATE makes the relation (and holds its lock) only now.
            got = _strongest(conn, oid if oid is not None else _oid(conn, st.lock_on))
            assert got is st.lock, f"{st.purpose!r}: labelled {st.lock.value}, took {got}"
            seen.append(f"{st.purpose}: {st.lock.value}")


def test_every_labelled_lock_is_the_lock_taken(database_url: str) -> None:
    plan = switch_plan()
    create_documents(database_url, 20)
    ensure_schema(database_url)
    seen: list[str] = []
    with contextlib.closing(connect(database_url)) as conn:
        facts = steps.Facts(source_indexes=(), live=True)
        _run_checked(conn, steps.adopt(plan, facts).forward, seen)
        _run_checked(conn, steps.expand(plan, facts).forward, seen)
        _run_checked(conn, steps.expand(plan, facts).backward, seen)
        _run_checked(conn, steps.expand(plan, facts).forward, seen)
        _run_checked(conn, steps.abort(plan, facts).forward, seen)
        _run_checked(conn, steps.adopt(plan, facts).forward, seen)
        _run_checked(conn, steps.expand(plan, facts).forward, seen)
        _run_checked(conn, steps.cutover(plan, facts).forward, seen)
        _run_checked(conn, steps.finalize(plan, facts).forward, seen)
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            (q.table_label(plan),),
        ).fetchone() == (0,)
    drops = [s for s in seen if s.startswith("detach the change-capture trigger")]
    assert drops == ["detach the change-capture trigger: ACCESS EXCLUSIVE"] * 3
    assert "attach the change-capture trigger: SHARE ROW EXCLUSIVE" in seen
