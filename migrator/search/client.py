"""migrator.search: model-aware search through a migrator view, for any Python service.

Reads the active model from migrator.active_models, embeds the query with THAT model (one
provider per process and fingerprint, created on first use), and runs the guarded query, which
returns zero rows rather than wrong ones when the model changed; it then re-reads and retries.
No clients, pools or environment reads at import time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from migrator.bridge import store as bridge_store
from migrator.bridge.store import StoredBridge
from migrator.embedding.base import Matrix, Provider
from migrator.embedding.factory import provider_for
from migrator.errors import ConfigError, DatabaseError, MigratorError
from migrator.plan.model import Metric, ModelSpec, Plan, VectorType, parse_plan

_providers: dict[tuple[int, str, str | None], Provider] = {}
_providers_lock = threading.Lock()


def shared_provider(spec: ModelSpec, environ: Mapping[str, str]) -> Provider:
    """One provider (and so one HTTP client) per process and model, created on first use."""
    # The pid is part of the key: a forked child must not reuse its parent's HTTP connections.
    key = (os.getpid(), spec.fingerprint(), spec.base_url)
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _providers[key] = provider_for(spec, environ)
        return provider


@dataclass(frozen=True)
class ActiveModel:
    """A row of migrator.active_models, plus the search settings of its migration's plan."""

    view_schema: str
    view_name: str
    migration: str
    column_name: str
    fingerprint: str
    model: ModelSpec
    vector_type: VectorType
    dimensions: int
    ef_search: int | None = None
    probes: int | None = None
    iterative_scan: str | None = None
    # Every search-time setting of the stored plan (index.search_settings): SET LOCAL per query.
    search_settings: tuple[tuple[str, str], ...] = ()
    embedding_alias: str = "embedding"
    model_alias: str = "embedding_model"
    columns: tuple[str, ...] = ()
    metric: Metric = Metric.COSINE
    # Bridge mode: queries are embedded with the bridge's model and mapped into this column's
    # space; the guard still compares the column's own fingerprint.
    bridge: StoredBridge | None = None

    @property
    def bridge_id(self) -> int | None:
        return None if self.bridge is None else self.bridge.id

    def same_serving(self, other: ActiveModel) -> bool:
        return (self.fingerprint, self.vector_type, self.bridge_id) == (
            other.fingerprint,
            other.vector_type,
            other.bridge_id,
        )


@dataclass(frozen=True)
class Hit:
    row: dict[str, Any]
    distance: float
    model: str  # the fingerprint the view reported for this row


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    fingerprint: str  # the model the query was embedded with
    model_switch_retries: int
    elapsed_ms: float = 0.0
    bridge_id: int | None = None  # the bridge the query went through (None: none)

    @property
    def mixed(self) -> int:
        """Rows whose model differs from the query's: must always be 0."""
        return sum(1 for h in self.hits if h.model != self.fingerprint)


@dataclass
class _Cache:
    model: ActiveModel | None = None
    read_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def split_view(view: str) -> tuple[str, str]:
    schema, _, name = view.rpartition(".")
    return (schema or "public"), name


class SearchClient:
    """Search a migrator view with whichever model it serves now. Thread-safe.

    `pool_or_conninfo`: a psycopg_pool.ConnectionPool (shared with the service) or a conninfo
    string (a small private pool is opened lazily). `environ` holds the API key variables the
    model needs; by default the process environment, read once here.
    """

    def __init__(
        self,
        pool_or_conninfo: ConnectionPool | str,
        *,
        view: str,
        environ: Mapping[str, str] | None = None,
        registry_ttl: float = 2.0,
        max_switch_retries: int = 3,
        pool_size: int = 4,
    ) -> None:
        self._pool = pool_or_conninfo if isinstance(pool_or_conninfo, ConnectionPool) else None
        self._conninfo = pool_or_conninfo if isinstance(pool_or_conninfo, str) else None
        self._owns_pool = self._pool is None
        self._pool_size = pool_size
        self._pool_lock = threading.Lock()
        self.view_schema, self.view_name = split_view(view)
        self.environ = dict(os.environ if environ is None else environ)
        self.registry_ttl = registry_ttl
        self.max_switch_retries = max_switch_retries
        self._cache = _Cache()
        self._bridges: dict[int, StoredBridge] = {}

    # ---- connections ----
    def _get_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                assert self._conninfo is not None
                self._pool = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._pool_size,
                    open=True,
                    kwargs={"autocommit": True, "application_name": "migrator-search"},
                )
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._get_pool().connection() as conn:
            # The vector adapters are per connection; register once per pooled connection.
            if conn.adapters.types.get("vector") is None:
                register_vector(conn)
            yield conn

    def close(self) -> None:
        with self._pool_lock:
            if self._owns_pool and self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the active model ----
    def active_model(self, *, refresh: bool = False) -> ActiveModel:
        c = self._cache
        with c.lock:
            fresh = c.model is not None and time.monotonic() - c.read_at < self.registry_ttl
            if fresh and not refresh:
                assert c.model is not None
                return c.model
        model = self._read_registry()
        with c.lock:
            c.model, c.read_at = model, time.monotonic()
        return model

    def _read_registry(self) -> ActiveModel:
        with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                row = cur.execute(
                    "SELECT a.migration, a.column_name, a.fingerprint, a.model, a.vector_type, "
                    "a.dimensions, a.bridge_id, m.plan FROM migrator.active_models a "
                    "LEFT JOIN migrator.migrations m ON m.name = a.migration "
                    "WHERE a.view_schema = %s AND a.view_name = %s",
                    (self.view_schema, self.view_name),
                ).fetchone()
            except pgerr.UndefinedTable:
                row = None
            if row is None:
                raise ConfigError(
                    f"no active model is registered for view {self.view_schema}.{self.view_name}",
                    hint="run `migrator adopt PLAN` to create the view and register its model",
                )
            model = _active_model(self.view_schema, self.view_name, row)
            if row.get("bridge_id") is not None:
                model = replace(model, bridge=self._bridge(conn, int(row["bridge_id"]), model))
            if not model.columns:  # no readable plan: serve the view's other columns
                cols = cur.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (sql.Identifier(self.view_schema, self.view_name).as_string(conn),),
                ).fetchall()
                skip = {model.embedding_alias, model.model_alias}
                model = replace(
                    model, columns=tuple(r["attname"] for r in cols if r["attname"] not in skip)
                )
        return model

    def _bridge(self, conn: psycopg.Connection, bridge_id: int, model: ActiveModel) -> StoredBridge:
        """The registry's bridge, checked against the column it must map into (cached by id:
        a stored bridge never changes)."""
        found = self._bridges.get(bridge_id)
        if found is None:
            found = bridge_store.get(conn, bridge_id)
            if found is None:
                raise DatabaseError(f"the registry names bridge {bridge_id}, which is not stored")
            self._bridges[bridge_id] = found
        if found.to_fingerprint != model.fingerprint or found.map.dims_out != model.dimensions:
            raise DatabaseError(
                f"bridge {bridge_id} maps into {found.to_fingerprint}, but the view serves "
                f"{model.fingerprint}",
                hint="run `migrator bridge off PLAN`",
            )
        return found

    # ---- searching ----
    def embed(self, text: str, model: ActiveModel) -> Matrix:
        """The query vector for `model`'s column: its own model's, or, bridged, the bridge's
        query model's mapped into the column's space and normalised."""
        if not text or not text.strip():
            raise ValueError("the query is empty")
        if model.bridge is None:
            provider = shared_provider(model.model, self.environ)
            return provider.embed_strict([text], normalize=model.model.normalize)
        spec = model.bridge.from_model
        raw = shared_provider(spec, self.environ).embed_strict([text], normalize=spec.normalize)
        return model.bridge.map.apply(raw, normalize=model.model.normalize)

    def search(self, text: str, k: int = 10) -> SearchResult:
        """Top-k rows of the view for `text`, embedded with the model the view serves now."""
        t0 = time.perf_counter()
        model = self.active_model()
        retries = 0
        while True:
            try:
                vec = self.embed(text, model)[0]
            except MigratorError:
                # The model did not answer: a bridge switched on meanwhile (the old model's
                # sunset) serves the query; otherwise the error stands.
                latest = self.active_model(refresh=True)
                if latest.same_serving(model) or retries >= self.max_switch_retries:
                    raise
                model, retries = latest, retries + 1
                continue
            error: psycopg.Error | None = None
            try:
                hits = self.query(vec, model, k)
            except (pgerr.UndefinedFunction, pgerr.DataException) as exc:
                # A stale cached type or dimension (e.g. the view went vector -> halfvec).
                hits, error = [], exc
            if hits:
                break
            latest = self.active_model(refresh=True)
            if latest.same_serving(model):
                if error is not None:
                    raise DatabaseError(f"search on {self.view_name} failed: {error}") from error
                break  # genuinely no rows
            if retries >= self.max_switch_retries:
                raise DatabaseError(
                    f"the model of {self.view_name} kept changing during a search",
                    hint="retry the search",
                )
            model, retries = latest, retries + 1
        elapsed = (time.perf_counter() - t0) * 1000
        return SearchResult(hits, model.fingerprint, retries, elapsed, model.bridge_id)

    def query(self, vector: np.ndarray, model: ActiveModel, k: int) -> list[Hit]:
        """The guarded query: zero rows unless the view serves `model` (no distance computed)."""
        stmt = guarded_query(model)
        with (
            self.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            for name, value in session_settings(model):
                cur.execute("SELECT set_config(%s, %s, true)", (name, value))
            rows = cur.execute(stmt, {"q": vector, "fp": model.fingerprint, "k": k}).fetchall()
        out = []
        for r in rows:
            distance = float(r.pop("_distance"))
            fp = str(r.pop("_model"))
            out.append(Hit(r, distance, fp))
        return out


def session_settings(model: ActiveModel) -> tuple[tuple[str, str], ...]:
    """What a search SETs LOCAL: the stored plan's search settings (read from the registry's
    migration row, so a changed ef_search reaches running services within `registry_ttl`)."""
    if model.search_settings:
        return model.search_settings
    return (
        ("hnsw.ef_search", str(model.ef_search or 40)),
        ("hnsw.iterative_scan", model.iterative_scan or "off"),
        ("ivfflat.probes", str(model.probes or 1)),
    )


def guarded_query(model: ActiveModel) -> sql.Composed:
    """SELECT cols, model, distance FROM view WHERE model = fp AND vector IS NOT NULL
    ORDER BY distance LIMIT k.

    `IS NOT NULL`: rows without a vector (empty text, not embedded yet) have no distance; a
    sequential scan would return them last when fewer than k rows have one. HNSW and IVFFlat
    never index NULLs, so the planner still serves the query from the index (EXPLAIN checked
    in tests/integration/test_search.py).
    """
    cols: list[sql.Composable] = [sql.Identifier(c) for c in model.columns]
    emb = sql.Identifier(model.embedding_alias)
    qv = sql.SQL("%(q)s::{}").format(sql.SQL(model.vector_type.value))
    op = sql.SQL(model.metric.operator)  # from a closed enum
    cols.append(sql.SQL("{} AS _model").format(sql.Identifier(model.model_alias)))
    cols.append(sql.SQL("{} {} {} AS _distance").format(emb, op, qv))
    return sql.SQL(
        "SELECT {cols} FROM {view} WHERE {m} = %(fp)s AND {emb} IS NOT NULL "
        "ORDER BY {emb} {op} {qv} LIMIT %(k)s"
    ).format(
        cols=sql.SQL(", ").join(cols),
        view=sql.Identifier(model.view_schema, model.view_name),
        m=sql.Identifier(model.model_alias),
        emb=emb,
        op=op,
        qv=qv,
    )


def _active_model(schema: str, name: str, row: dict[str, Any]) -> ActiveModel:
    spec = ModelSpec.model_validate(row["model"])
    base = dict(
        view_schema=schema,
        view_name=name,
        migration=row["migration"],
        column_name=row["column_name"],
        fingerprint=row["fingerprint"],
        model=spec,
        vector_type=VectorType(row["vector_type"]),
        dimensions=int(row["dimensions"]),
    )
    plan = _plan_or_none(row.get("plan"))
    if plan is None:
        return ActiveModel(**base)
    return ActiveModel(
        **base,
        ef_search=plan.index.ef_search,
        probes=plan.index.probes,
        iterative_scan=plan.index.iterative_scan.value,
        search_settings=tuple(plan.index.search_settings().items()),
        embedding_alias=plan.view.embedding_alias,
        model_alias=plan.view.model_alias,
        columns=plan.view.columns,
        metric=plan.index.metric,
    )


def _plan_or_none(data: Any) -> Plan | None:
    if not data:
        return None
    try:
        return parse_plan(data)
    except Exception:  # an unreadable stored plan only costs the tuning, never the search
        return None


def search_once(
    conninfo: str, view: str, text: str, k: int = 10, environ: Mapping[str, str] | None = None
) -> SearchResult:
    """One search with a throwaway client (scripts, health checks)."""
    with SearchClient(conninfo, view=view, environ=environ, pool_size=1) as client:
        return client.search(text, k)


def as_rows(result: SearchResult) -> list[dict[str, Any]]:
    return [{**h.row, "distance": h.distance, "embedding_model": h.model} for h in result.hits]
