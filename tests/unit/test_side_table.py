"""Storage side_table, the pure parts: the plan's setting and hash, the join put into (and
taken out of) the user's own view text, change capture's SQL, and the estimates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from migrator.db.state import Migration, State, check_plan_unchanged
from migrator.ddl import statements as q
from migrator.ddl.viewdef import find_table, parse_view
from migrator.errors import PhaseError, PlanError
from migrator.plan.estimate import TableStorage, disk_growth, estimate, side_table_bytes
from migrator.plan.model import Plan, VectorType, parse_plan

COLS = ["id", "title", "body", "embedding", "embedding_model"]


def _plan(**target: object) -> Plan:
    with open("plans/local-demo.yaml") as fh:
        data = yaml.safe_load(fh)
    data["target"].update(target)
    return parse_plan(data)


def _parse(text: str, side: bool = True):  # type: ignore[no-untyped-def]
    return parse_view(
        text,
        COLS,
        embedding_alias="embedding",
        model_alias="embedding_model",
        managed_columns=("embedding", "embedding_v2"),
        table=("public", "documents"),
        pk="id" if side else None,
    )


def test_the_setting_is_structural_and_column_keeps_the_old_hash() -> None:
    column, side = _plan(storage="column"), _plan()
    assert _plan(storage="column").plan_hash() == column.plan_hash()
    assert side.plan_hash() != column.plan_hash()
    assert side.side and side.side_table == "documents_embedding_v2"
    assert _plan(storage="side_table", side_table="v2").side_table == "v2"
    with pytest.raises(PlanError, match=r"side_table is set but target\.storage"):
        _plan(storage="column", side_table="v2")
    with pytest.raises(PlanError, match=r"must differ from table\.name"):
        _plan(storage="side_table", side_table="documents")


ORIGINAL = (
    " SELECT d.id, d.title, d.body, (d.embedding)::vector AS embedding, "
    "'fp-old'::text AS embedding_model FROM (public.documents d JOIN public.t t "
    "ON ((t.id = d.tenant))) WHERE (d.category <> 'c3'::text);"
)
# What PostgreSQL deparses after cutover: the join migrator inserted, parenthesised.
CUT = (
    " SELECT d.id, d.title, d.body, (migrator_side.embedding_v2)::vector AS embedding, "
    "'fp-new'::text AS embedding_model FROM ((public.documents d JOIN "
    "public.documents_embedding_v2 migrator_side USING (id)) JOIN public.t t "
    "ON ((t.id = d.tenant))) WHERE (d.category <> 'c3'::text)"
)


def test_cutover_joins_the_side_table_next_to_the_tables_item() -> None:
    plan = _plan(storage="side_table")
    body = _parse(ORIGINAL)
    assert body.table is not None and body.table.alias == "d" and body.table.joined is None
    out = body.render(
        "embedding_v2",
        VectorType.VECTOR,
        "fp-new",
        "embedding",
        "embedding_model",
        side_join=q.side_join(plan),
    ).as_string(None)
    assert out == (
        ' SELECT d.id, d.title, d.body, "migrator_side"."embedding_v2"::vector AS "embedding", '
        "'fp-new'::text AS \"embedding_model\" FROM (public.documents d JOIN "
        '"public"."documents_embedding_v2" AS "migrator_side" USING ("id") JOIN public.t t '
        "ON ((t.id = d.tenant))) WHERE (d.category <> 'c3'::text)"
    )


def test_rollback_takes_the_join_out_again() -> None:
    body = _parse(CUT)
    assert body.qualifier == "migrator_side" and body.base_qualifier == "d"
    assert body.table is not None and body.table.joined is not None
    out = body.render(
        "embedding", VectorType.VECTOR, "fp-old", "embedding", "embedding_model"
    ).as_string(None)
    assert out == (
        ' SELECT d.id, d.title, d.body, "d"."embedding"::vector AS "embedding", '
        "'fp-old'::text AS \"embedding_model\" FROM (public.documents d JOIN public.t t "
        "ON ((t.id = d.tenant))) WHERE (d.category <> 'c3'::text)"
    )


def test_a_table_named_twice_or_not_at_all_has_no_item() -> None:
    twice = "SELECT a.id FROM (public.documents a JOIN public.documents b ON ((a.id = b.id)))"
    assert find_table(twice, "public", "documents") is None
    assert find_table("SELECT x.id FROM other.documents x", "public", "documents") is None
    unaliased = find_table("SELECT id FROM public.documents WHERE (id > 1)", "public", "documents")
    assert unaliased is not None and unaliased.alias == "documents"


def test_change_capture_deletes_the_side_vector_and_never_names_the_column() -> None:
    plan = _plan(storage="side_table")
    fn = q.capture_function(plan, (plan.target.column,), plan.source.column).as_string(None)
    assert 'DELETE FROM "public"."documents_embedding_v2"' in fn
    assert 'NEW."embedding_v2"' not in fn and "TG_OP = ''INSERT'' OR text_changed" in fn
    trigger = q.capture_trigger(plan).as_string(None)
    assert "embedding_v2" not in trigger.split(" ON ")[0]
    after_cut = q.capture_function(plan, (plan.target.column, plan.source.column)).as_string(None)
    assert 'NEW."embedding" := NULL' in after_cut  # the old column kept fresh for rollback


def test_estimates_the_side_table_and_no_source_index_writes() -> None:
    storage = TableStorage(
        rows=100_000,
        heap_bytes=138 * 2**20,
        indexes=(),
        room_bytes=None,
    )
    column, side = _plan(storage="column"), _plan()
    heap, key = side_table_bytes(100_000, 384, False)
    # 384 dims: 1,584-byte tuples, five to a page; the key ~22 bytes a row.
    assert heap == 20_000 * 8192 and 2_000_000 < key < 2_600_000
    assert disk_growth(side, storage, 100_000).heap_bytes == heap
    assert disk_growth(column, storage, 100_000).heap_bytes > heap
    # 1536 dims go to TOAST: the heap holds pointers, the TOAST table the chunks.
    big, _ = side_table_bytes(1000, 1536, False)
    assert big > 1000 * 6152
    est = estimate(side, 100_000, [20] * 10, storage).as_dict()
    assert est["storage"] == "side_table" and set(est["modes"]) == {"column", "side_table"}
    assert est["index_write_seconds_per_row"] == 0.0


def _later() -> Plan:
    """A migration from an earlier one's side table, into a side table of its own."""
    with open("plans/local-demo.yaml") as fh:
        data = yaml.safe_load(fh)
    data["source"], data["target"] = (
        {**data["target"], "side_table": "documents_embedding_v2"},
        {**data["source"], "column": "embedding_v3", "storage": "side_table"},
    )
    data["source"].pop("storage", None)
    data["source"]["column"] = "embedding_v2"
    return parse_plan(data)


def test_a_later_migration_reads_and_refreshes_the_old_side_table() -> None:
    from migrator.ddl import steps

    plan = _later()
    assert q.side_label(plan, "embedding_v2") == "public.documents_embedding_v2"
    assert q.side_label(plan) == "public.documents_embedding_v3"
    fn = q.capture_function(plan, (plan.target.column,), plan.source.column).as_string(None)
    assert 'EXISTS (SELECT 1 FROM "public"."documents_embedding_v2"' in fn  # stale recorded
    assert 'DELETE FROM "public"."documents_embedding_v3"' in fn
    trigger = q.capture_trigger(plan).as_string(None).split(" ON ")[0]
    assert "embedding_v2" not in trigger and "embedding_v3" not in trigger
    refresh = q.cas_update(
        plan, plan.source.column, "bigint", VectorType.VECTOR, 384, stale=True
    ).as_string(None)
    assert refresh.startswith("WITH ok AS") and "ON CONFLICT" in refresh and "DELETE" in refresh
    fin = [s.render() for s in steps.finalize(plan).forward]
    assert 'DROP TABLE IF EXISTS "public"."documents_embedding_v2"' in fin
    both = q.vectors_from(plan, ("embedding_v2", "embedding_v3")).as_string(None)
    assert both.count("LEFT JOIN") == 2
    with pytest.raises(PlanError, match=r"must differ from source\.side_table"):
        parse_plan(
            {
                **_later().canonical(),
                "target": {
                    **_later().canonical()["target"],
                    "side_table": "documents_embedding_v2",
                },
            }
        )


def _migration(plan: Plan) -> Migration:
    now = datetime.now(UTC)
    return Migration(
        plan.name,
        State.EXPANDED,
        plan.plan_hash(),
        plan.canonical(),
        "",
        "",
        None,
        now,
        now,
        None,
        "t",
        "f",
    )


def test_a_migration_started_under_the_old_default_is_named_with_its_fix() -> None:
    # Registered when column was the default; the same file, read now, means side_table.
    started = _migration(_plan(storage="column"))
    with pytest.raises(PhaseError, match=r"started with target\.storage column") as err:
        check_plan_unchanged(started, _plan())
    assert "storage: column" in (err.value.hint or "")
    check_plan_unchanged(started, _plan(storage="column"))  # the fix the hint names
    # An explicit side_table, or another change as well, is an ordinary changed plan.
    with pytest.raises(PhaseError, match="the plan file changed"):
        check_plan_unchanged(started, _plan(storage="side_table"))
    with pytest.raises(PhaseError, match="the plan file changed"):
        check_plan_unchanged(started, _plan(column="embedding_v9"))
