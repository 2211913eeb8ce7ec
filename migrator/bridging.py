"""`bridge fit`, `bridge on`, `bridge off`: fit a map from the new model's space into the old
one on backfilled rows, measure it against a re-embed, and switch the search side to it.

The switch is one transaction (registry bridge_id + NOTIFY), like cutover's: the view keeps
serving the old column with its old fingerprint; only how queries are embedded changes.
These commands do not take the migration's operator lock, which a running backfill holds for
its whole run (the sunset case needs `bridge on` then): they take a lock of their own, and the
switch locks the registry row (FOR UPDATE), so it is ordered with a concurrent cutover or
rollback and checks what the view serves under that lock. Renders nothing (the CLI does).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from psycopg import sql

from migrator.backfill import preflight
from migrator.bridge import fit as bfit
from migrator.bridge import sample, store
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect, ensure_schema, resolve_url
from migrator.db.context import Context
from migrator.ddl import statements as q
from migrator.ddl.statements import Lock, Statement
from migrator.embedding import EmbeddingError, Provider, provider_for
from migrator.errors import GateFailedError, PhaseError
from migrator.plan.model import Plan
from migrator.verify import bridge_check, data
from migrator.verify import labelled as verify_labelled
from migrator.verify.metrics import F32
from migrator.verify.run import resolve_labelled


@dataclass(frozen=True)
class FitOutcome:
    bridge_id: int
    method: str
    train_rows: int
    holdout_rows: int
    paired_rows: int
    scores: tuple[tuple[str, float], ...]
    figures: dict[str, Any]
    fit_seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BridgeSwitch:
    command: str
    bridge_id: int | None
    column: str
    fingerprint: str
    query_model: str  # the fingerprint queries are embedded with now
    retention: float | None
    forced: bool
    replaces_source: bool
    attempts: int
    hold_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(
    settings: Settings,
    plan: Plan,
    *,
    rows: int | None = None,
    seed: int | None = None,
    plan_dir: Path | None = None,
) -> FitOutcome:
    """Fit on a sample of paired rows, compare on the held-out ones, store the bridge."""
    with _context(settings, plan, "bridge-fit") as ctx:
        conn, cfg = ctx.conn, plan.bridge
        paired = sample.paired_count(conn, plan)
        if paired < cfg.min_rows:
            raise PhaseError(
                f"only {paired:,} rows hold both vectors; a bridge needs at least "
                f"{cfg.min_rows:,} (bridge.min_rows)",
                hint="let `migrator backfill PLAN` run further, then fit again",
            )
        seed = plan.verify.seed if seed is None else seed
        keys: list[str] = []
        t0 = time.perf_counter()
        result = bfit.fit_pairs(
            sample.paired_chunks(
                conn,
                plan,
                rows=rows or cfg.sample_rows,
                seed=seed,
                holdout_every=cfg.holdout_every,
                keys=keys,
            ),
            plan.target.model.dimensions,
            plan.source.model.dimensions,
            k=plan.verify.k,
        )
        seconds = time.perf_counter() - t0
        notes: list[str] = []
        figs = _evaluate(ctx, result, keys[: result.holdout_rows], seed, plan_dir, notes)
        figs["fit"] = {
            "method": result.bridge.label(),
            "holdout_pair_recall": result.holdout_recall,
            "candidates": dict(result.scores),
            "seconds": round(seconds, 3),
        }
        bridge_id = store.save(conn, plan, result, figs)
        ctx.event(
            "ok",
            f"bridge {bridge_id} fitted: {result.bridge.label()} on {result.train_rows:,} rows; "
            f"{figs['advice']}",
            bridge_id=bridge_id,
            retention=figs.get("retention"),
            recommendation=figs.get("recommendation"),
        )
        return FitOutcome(
            bridge_id,
            result.bridge.label(),
            result.train_rows,
            result.holdout_rows,
            paired,
            result.scores,
            figs,
            round(seconds, 3),
            tuple(notes),
        )


def _evaluate(
    ctx: Context,
    result: bfit.FitResult,
    keys: list[str],
    seed: int,
    plan_dir: Path | None,
    notes: list[str],
) -> dict[str, Any]:
    plan = ctx.plan
    texts = _texts(ctx, keys)
    have = [i for i, pk in enumerate(keys) if pk in texts]
    keys = [keys[i] for i in have]
    queries = data.queries_for([texts[pk] for pk in keys], seed, "span")
    new_p = provider_for(plan.target.model, ctx.settings.environ)
    old_p = _old_provider(ctx, notes)
    try:
        q_new, f_new = data.embed_all(new_p, plan.target.model, queries)
        q_old, f_old = _embed_old(old_p, plan, queries, notes)
        keep = [i for i in range(len(keys)) if i not in set(f_new) | set(f_old)]
        results = [
            bridge_check.compare(
                "documents",
                relevant=[[keys[i]] for i in keep],
                q_new=q_new[keep],
                q_old=None if q_old is None else q_old[keep],
                old_ids=keys,
                old=result.holdout_y[have],
                new_ids=keys,
                new=result.holdout_x[have],
                bridge=result.bridge,
                k=plan.verify.k,
                metric=plan.index.metric,
            )
        ]
        if plan.verify.labelled_queries:
            results.append(_labelled(ctx, result.bridge, new_p, old_p, plan_dir))
    finally:
        new_p.close()
        if old_p is not None:
            old_p.close()
    return bridge_check.figures(results, plan.bridge.min_retention)


def _texts(ctx: Context, keys: list[str]) -> dict[str, str]:
    plan = ctx.plan
    query = sql.SQL("SELECT {pk}::text, {text} FROM {tbl} WHERE {pk}::text = ANY(%s) AND {ok}")
    rows = ctx.conn.execute(
        query.format(
            pk=sql.Identifier(plan.table.primary_key),
            text=q.text_expr(plan),
            tbl=q.table_ident(plan),
            ok=q.eligible_predicate(plan),
        ),
        (keys,),
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _old_provider(ctx: Context, notes: list[str]) -> Provider | None:
    """The old model when it answers a test embedding; None (noted) when it is gone."""
    plan = ctx.plan
    problem = preflight.probe("source", plan.source.model, ctx.settings)
    if problem is not None:
        notes.append(f"old model not measured: {problem.what}")
        return None
    return provider_for(plan.source.model, ctx.settings.environ)


def _embed_old(
    old_p: Provider | None, plan: Plan, queries: list[str], notes: list[str]
) -> tuple[F32 | None, list[int]]:
    if old_p is None:
        return None, []
    try:
        return data.embed_all(old_p, plan.source.model, queries)
    except EmbeddingError as exc:
        notes.append(f"old model not measured: {exc.one_line()}")
        return None, []


def _labelled(
    ctx: Context,
    bridge: bfit.BridgeMap,
    new_p: Provider,
    old_p: Provider | None,
    plan_dir: Path | None,
) -> bridge_check.Comparison:
    plan, conn = ctx.plan, ctx.conn
    name = plan.verify.labelled_queries
    assert name
    items = verify_labelled.load_labelled(resolve_labelled(name, plan_dir))
    texts = [t for t, _ in items]
    q_new, f_new = data.embed_all(new_p, plan.target.model, texts)
    q_old, f_old = _embed_old(old_p, plan, texts, [])
    keep = [i for i in range(len(items)) if i not in set(f_new) | set(f_old)]
    src = data.load_column(conn, plan, plan.source.column, plan.source.model.dimensions)
    tgt = data.load_column(conn, plan, plan.target.column, plan.target.model.dimensions)
    return bridge_check.compare(
        "labelled",
        relevant=[items[i][1] for i in keep],
        q_new=q_new[keep],
        q_old=None if q_old is None else q_old[keep],
        old_ids=src.ids,
        old=src.matrix,
        new_ids=tgt.ids,
        new=tgt.matrix,
        bridge=bridge,
        k=plan.verify.k,
        metric=plan.index.metric,
    )


# ---- the switch -------------------------------------------------------------------------------


@contextlib.contextmanager
def _context(settings: Settings, plan: Plan, command: str) -> Iterator[Context]:
    url = resolve_url(settings)
    conn = connect(url)
    try:
        with state.operator_lock(conn, f"{plan.name}#bridge"):
            migration = state.find_migration(conn, plan.name)
            if migration is not None:
                state.check_plan_unchanged(migration, plan)
            state.guard(command, migration)
            ensure_schema(url)
            yield Context(settings, plan, url, conn, command, migration)
    finally:
        conn.close()


def _registry_statements(
    plan: Plan, bridge_id: int | None, replaces: int | None, *, touch_source: bool
) -> tuple[Statement, ...]:
    stmts = [
        Statement(
            store.set_active(plan, bridge_id),
            "point the registry at the bridge" if bridge_id else "remove the registry's bridge",
            Lock.ROW_EXCLUSIVE,
            "migrator.active_models",
            ddl=False,
        )
    ]
    if touch_source:
        stmts.append(
            Statement(
                store.set_replaces_source(plan, replaces),
                "record which bridge stands in for the old model",
                Lock.ROW_EXCLUSIVE,
                "migrator.bridges",
                ddl=False,
            )
        )
    stmts.append(Statement(q.notify_switch(plan), "announce the switch (NOTIFY)", ddl=False))
    return tuple(stmts)


def _served(ctx: Context) -> tuple[str, str, int | None]:
    plan = ctx.plan
    reg = store.served(ctx.conn, plan)
    if reg is None or reg[0] != plan.source.column:
        what = "has no registry entry" if reg is None else f"serves {reg[0]}"
        raise PhaseError(
            f"{q.view_label(plan)} {what}, not the old column {plan.source.column}: a bridge "
            "maps queries into the old column only",
            hint="after cutover the view serves the new model and needs no bridge; "
            "`migrator rollback PLAN --bridge` falls back to the old column with the bridge",
        )
    return reg


def bridge_on(
    settings: Settings, plan: Plan, *, force: bool = False, old_model_gone: bool = False
) -> BridgeSwitch:
    """Embed queries with the new model and map them into the old column, atomically."""
    with _context(settings, plan, "bridge-on") as ctx:
        column, fp, _ = _served(ctx)
        bridge = store.latest(ctx.conn, plan)
        if bridge is None:
            raise PhaseError(
                f"no bridge is fitted for {plan.name} ({plan.target.model.name} -> "
                f"{plan.source.model.name})",
                hint="run `migrator bridge fit PLAN` first",
            )
        threshold = plan.bridge.min_retention
        if not force and (bridge.retention is None or bridge.retention < threshold):
            measured = "not measured" if bridge.retention is None else f"{bridge.retention:.1%}"
            raise GateFailedError(
                f"bridge {bridge.id} keeps {measured} of a re-embed's recall@{plan.verify.k}; "
                f"the plan asks for at least {threshold:.0%} (bridge.min_retention)",
                hint="refit on more rows (`migrator bridge fit PLAN`), lower "
                "bridge.min_retention, or pass --force to serve it anyway",
            )
        replaces = bridge.id if old_model_gone else None
        return _apply(
            ctx,
            "bridge on",
            bridge.id,
            replaces,
            column,
            fp,
            bridge.retention,
            force,
            touch_source=old_model_gone,
        )


def bridge_off(settings: Settings, plan: Plan, *, force: bool = False) -> BridgeSwitch:
    """Embed queries with the old model again (the old model must answer)."""
    with _context(settings, plan, "bridge-off") as ctx:
        column, fp, active = _served(ctx)
        current = store.get(ctx.conn, active) if active is not None else None
        if current is not None and current.replaces_source:
            problem = preflight.probe("source", plan.source.model, settings)
            if problem is not None and not force:
                raise PhaseError(
                    f"bridge {current.id} stands in for the old model, which does not answer "
                    f"({problem.what}): without the bridge every search would fail",
                    hint="bring the old model back first, or pass --force",
                )
        return _apply(ctx, "bridge off", None, None, column, fp, None, force, touch_source=True)


def _apply(
    ctx: Context,
    command: str,
    bridge_id: int | None,
    replaces: int | None,
    column: str,
    fp: str,
    retention: float | None,
    force: bool,
    *,
    touch_source: bool,
) -> BridgeSwitch:
    plan, conn = ctx.plan, ctx.conn
    stmts = _registry_statements(plan, bridge_id, replaces, touch_source=touch_source)
    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{plan.cutover.lock_timeout_ms}ms",)
        )
        row = conn.execute(
            "SELECT column_name FROM migrator.active_models WHERE view_schema = %s AND "
            "view_name = %s AND migration = %s FOR UPDATE",
            (plan.view_schema, plan.view.name, plan.name),
        ).fetchone()
        if row is None or row[0] != plan.source.column:
            raise PhaseError(
                f"{q.view_label(plan)} switched to {row[0] if row else 'nothing'} meanwhile",
                hint="a cutover ran at the same time; nothing was changed",
            )
        for st in stmts:
            conn.execute(cast(sql.Composed, st.query))
    hold_ms = (time.perf_counter() - t0) * 1000
    query_model = plan.target.model.fingerprint() if bridge_id else fp
    phase = ctx.migration.phase.value if ctx.migration else None
    ctx.event(
        "ok",
        f"{q.view_label(plan)} serves {column} ({fp}); queries embedded with {query_model}"
        + (f" through bridge {bridge_id}" if bridge_id else ""),
        before=phase,
        after=phase,
        bridge_id=bridge_id,
        forced=force,
        replaces_source=replaces is not None,
        hold_ms=round(hold_ms, 2),
    )
    return BridgeSwitch(
        command,
        bridge_id,
        column,
        fp,
        query_model,
        retention,
        force,
        replaces is not None,
        1,
        round(hold_ms, 2),
    )
