"""migrator.bridges and the registry's bridge_id: the one owner of every statement on them.

A bridge row holds the map (float32 bytes) with its fingerprint: the model whose queries it
takes (from), the space it maps into (to), the method, the training rows and the held-out
figures. Switching the registry's bridge_id is left to the callers' own transactions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.bridge.fit import BridgeMap, FitResult
from migrator.ddl.statements import Lock, Statement
from migrator.errors import PhaseError
from migrator.plan.model import ModelSpec, Plan


@dataclass(frozen=True)
class StoredBridge:
    id: int
    migration: str
    from_fingerprint: str  # the new model: what embeds the query
    to_fingerprint: str  # the old model: the space of the column it is compared with
    from_model: ModelSpec
    map: BridgeMap
    train_rows: int
    holdout_rows: int
    retention: float | None
    figures: dict[str, Any]
    replaces_source: bool
    created_at: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.map.label(),
            "from": self.from_fingerprint,
            "to": self.to_fingerprint,
            "train_rows": self.train_rows,
            "holdout_rows": self.holdout_rows,
            "retention": self.retention,
            "replaces_source": self.replaces_source,
            "created_at": self.created_at,
        }


_COLUMNS = (
    "id, migration, from_fingerprint, to_fingerprint, from_model, method, params, dims_in, "
    "dims_out, weights, bias, train_rows, holdout_rows, retention, figures, replaces_source, "
    "created_at::text"
)


def _bytes(m: np.ndarray) -> bytes:
    return np.ascontiguousarray(m, dtype="<f4").tobytes()


def save(conn: psycopg.Connection, plan: Plan, result: FitResult, figures: dict[str, Any]) -> int:
    """Store a fitted bridge; its id. Retention is the documents-as-queries figure when measured."""
    m = result.bridge
    retention = figures.get("retention")
    row = conn.execute(
        "INSERT INTO migrator.bridges (migration, from_fingerprint, to_fingerprint, from_model, "
        "method, params, dims_in, dims_out, weights, bias, train_rows, holdout_rows, retention, "
        "figures) VALUES (%s, %s, %s, %s::jsonb, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, "
        "%s::jsonb) RETURNING id",
        (
            plan.name,
            plan.target.model.fingerprint(),
            plan.source.model.fingerprint(),
            json.dumps(plan.target.model.model_dump(mode="json"), sort_keys=True),
            m.method,
            json.dumps(dict(m.params)),
            m.dims_in,
            m.dims_out,
            _bytes(m.weights),
            _bytes(m.bias),
            result.train_rows,
            result.holdout_rows,
            retention if isinstance(retention, int | float) else None,
            json.dumps(figures, default=str),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _from_row(r: tuple[Any, ...]) -> StoredBridge:
    dims_in, dims_out = int(r[7]), int(r[8])
    weights = np.frombuffer(bytes(r[9]), dtype="<f4").reshape(dims_in, dims_out)
    bias = np.frombuffer(bytes(r[10]), dtype="<f4").reshape(dims_out)
    params = tuple((str(k), float(v)) for k, v in dict(r[6] or {}).items())
    return StoredBridge(
        id=int(r[0]),
        migration=str(r[1]),
        from_fingerprint=str(r[2]),
        to_fingerprint=str(r[3]),
        from_model=ModelSpec.model_validate(r[4]),
        map=BridgeMap(str(r[5]), weights.astype(np.float32), bias.astype(np.float32), params),
        train_rows=int(r[11]),
        holdout_rows=int(r[12]),
        retention=None if r[13] is None else float(r[13]),
        figures=dict(r[14] or {}),
        replaces_source=bool(r[15]),
        created_at=str(r[16]),
    )


def get(conn: psycopg.Connection, bridge_id: int) -> StoredBridge | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM migrator.bridges WHERE id = %s").format(sql.SQL(_COLUMNS)),
        (bridge_id,),
    ).fetchone()
    return _from_row(row) if row else None


def latest(conn: psycopg.Connection, plan: Plan) -> StoredBridge | None:
    """The newest bridge of the migration that fits the plan's two models, or None."""
    return _newest(conn, plan, replacing_only=False)


def replacing_source(conn: psycopg.Connection, plan: Plan) -> StoredBridge | None:
    """The bridge that stands in for a retired old model (catch-up, verify), if one was named."""
    return _newest(conn, plan, replacing_only=True)


def _newest(conn: psycopg.Connection, plan: Plan, *, replacing_only: bool) -> StoredBridge | None:
    only = sql.SQL("AND replaces_source " if replacing_only else "")
    try:
        row = conn.execute(
            sql.SQL(
                "SELECT {} FROM migrator.bridges WHERE migration = %s {}"
                "AND from_fingerprint = %s AND to_fingerprint = %s ORDER BY id DESC LIMIT 1"
            ).format(sql.SQL(_COLUMNS), only),
            (plan.name, plan.target.model.fingerprint(), plan.source.model.fingerprint()),
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # a read-only caller before schema 0004
        return None
    return _from_row(row) if row else None


def set_active(plan: Plan, bridge_id: int | None) -> sql.Composed:
    """The registry update that switches the search side (run with NOTIFY in one transaction)."""
    return sql.SQL(
        "UPDATE migrator.active_models SET bridge_id = {b}, switched_at = now() "
        "WHERE view_schema = {vs} AND view_name = {vn} AND migration = {m}"
    ).format(
        b=sql.Literal(bridge_id),
        vs=sql.Literal(plan.view_schema),
        vn=sql.Literal(plan.view.name),
        m=sql.Literal(plan.name),
    )


def set_replaces_source(plan: Plan, bridge_id: int | None) -> sql.Composed:
    """Name the bridge that stands in for the retired old model (None: the old model is back)."""
    return sql.SQL(
        "UPDATE migrator.bridges SET replaces_source = coalesce(id = {b}, false) "
        "WHERE migration = {m}"
    ).format(b=sql.Literal(bridge_id), m=sql.Literal(plan.name))


def served(conn: psycopg.Connection, plan: Plan) -> tuple[str, str, int | None] | None:
    """(column, fingerprint, bridge id) the registry names for the plan's view, or None."""
    row = conn.execute(
        "SELECT column_name, fingerprint, bridge_id FROM migrator.active_models "
        "WHERE view_schema = %s AND view_name = %s AND migration = %s",
        (plan.view_schema, plan.view.name, plan.name),
    ).fetchone()
    if row is None:
        return None
    return str(row[0]), str(row[1]), None if row[2] is None else int(row[2])


def switch_statements(plan: Plan, bridge_id: int | None) -> tuple[Statement, ...]:
    """The registry's bridge_id, in the caller's switch transaction (its NOTIFY announces it)."""
    return (
        Statement(
            set_active(plan, bridge_id),
            f"queries through bridge {bridge_id}" if bridge_id else "queries without a bridge",
            Lock.ROW_EXCLUSIVE,
            "migrator.active_models",
            ddl=False,
        ),
    )


def rollback_bridge(conn: psycopg.Connection, plan: Plan, wanted: bool | None) -> int | None:
    """The bridge a rollback serves through: the one standing in for a retired old model
    (always, unless refused with wanted=False), else the newest when asked."""
    if wanted is False:
        return None
    stand_in = replacing_source(conn, plan)
    if stand_in is not None:
        return stand_in.id
    if wanted:
        newest = latest(conn, plan)
        if newest is None:
            raise PhaseError(
                f"no bridge is fitted for {plan.name}: rollback cannot serve through one",
                hint="run `migrator bridge fit PLAN` first, or roll back without --bridge",
            )
        return newest.id
    return None
