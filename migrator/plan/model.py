"""The plan file model: a frozen, validated, hashable description of one migration.

Pure: no database, no network, no environment reads. `load_plan` reads a YAML file and turns
every problem into one `PlanError` line naming the file, the field path and what to do.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator

from migrator.errors import PlanError
from migrator.plan.vocab import (
    COLUMN_MAX_DIMS,
    INDEX_MAX_DIMS,
    IndexMethod,
    IterativeScan,
    Metric,
    OverlongPolicy,
    Role,
    Storage,
    VectorType,
)

MAX_IDENTIFIER_BYTES = 63
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def _identifier(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"identifier {value[:20]!r}... is {len(value.encode())} bytes; PostgreSQL would "
            f"silently truncate it to {MAX_IDENTIFIER_BYTES}: use a shorter name"
        )
    if not _IDENT_RE.match(value):
        raise ValueError(
            f"identifier {value!r} must be letters, digits and underscores, not starting with a "
            "digit (names that need odd quoting are refused)"
        )
    return value


Ident = Annotated[str, AfterValidator(_identifier)]


def _migration_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"name {value!r} must be 1-40 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter"
        )
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


TUNING_KEYS = frozenset({"description", "backfill", "verify", "cutover", "ddl", "bridge"})
# Search-time settings of the index section: they change no DDL (the service and verify SET
# them per query), so they may change mid-migration (issue 13: raising ef_search was refused).
SEARCH_KEYS = frozenset(
    {
        "ef_search",
        "probes",
        "iterative_scan",
        "max_scan_tuples",
        "scan_mem_multiplier",
        "max_probes",
    }
)
# Keys of the index section that only tune the build: they may change mid-migration.
TUNING_INDEX_KEYS = frozenset(
    {
        "maintenance_work_mem",
        "max_maintenance_work_mem",
        "max_parallel_maintenance_workers",
        "vacuum_before_build",
    }
)

# Re-exported: the vocabularies live in plan_types, the model here.
__all__ = [
    "COLUMN_MAX_DIMS",
    "INDEX_MAX_DIMS",
    "IndexMethod",
    "IterativeScan",
    "Metric",
    "OverlongPolicy",
    "Plan",
    "PlanError",
    "Role",
    "VectorType",
    "load_plan",
    "parse_plan",
]


class ModelSpec(Frozen):
    """One embedding model: who serves it and what its vectors look like."""

    provider: Literal["openai", "local"] = "openai"
    name: Annotated[str, Field(min_length=1, max_length=200)]
    dimensions: Annotated[int, Field(ge=1, le=COLUMN_MAX_DIMS)]
    base_url: str | None = None
    api_key_env: Ident | None = "OPENAI_API_KEY"
    # Send the `dimensions` request parameter (text-embedding-3-* and most local servers accept it).
    send_dimensions: bool = True
    normalize: bool = True
    max_inputs_per_request: Annotated[int, Field(ge=1, le=100_000)] = 2048
    max_tokens_per_request: Annotated[int, Field(ge=1)] = 300_000
    max_tokens_per_input: Annotated[int, Field(ge=1)] = 8192
    overlong: OverlongPolicy = OverlongPolicy.TRUNCATE
    request_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    usd_per_million_tokens: Annotated[float, Field(ge=0)] | None = None

    def fingerprint(self) -> str:
        """Identity of the vector space: a different fingerprint means incomparable vectors."""
        key = f"{self.provider}|{self.name}|{self.dimensions}|{'norm' if self.normalize else 'raw'}"
        return f"{self.name}@{self.dimensions}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class TableSpec(Frozen):
    schema_: Ident = Field("public", alias="schema")
    name: Ident
    primary_key: Ident = "id"

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TextSpec(Frozen):
    """The text to embed: one column, or a template such as "{title}\\n\\n{body}"."""

    column: Ident | None = None
    template: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TextSpec:
        if (self.column is None) == (self.template is None):
            raise ValueError("give exactly one of 'column' or 'template'")
        if self.template is not None:
            parts = template_parts(self.template)
            cols = [p for kind, p in parts if kind == "column"]
            if not cols:
                raise ValueError("template must reference at least one column, e.g. '{body}'")
            for col in cols:
                _identifier(col)
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        if self.column is not None:
            return (self.column,)
        assert self.template is not None
        seen: dict[str, None] = {}
        for kind, value in template_parts(self.template):
            if kind == "column":
                seen.setdefault(value, None)
        return tuple(seen)


def template_parts(template: str) -> list[tuple[str, str]]:
    """Split "{title}: {body}" into [("column","title"), ("literal",": "), ("column","body")]."""
    out: list[tuple[str, str]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is malformed: {exc}") from None
    for literal, field, spec, conv in parsed:
        if literal:
            out.append(("literal", literal))
        if field is not None:
            if spec or conv:
                raise ValueError("template fields take no format spec or conversion: use '{col}'")
            if not field:
                raise ValueError("template has an empty field '{}': name a column")
            out.append(("column", field))
    return out


class SourceSpec(Frozen):
    column: Ident = "embedding"
    type: VectorType = VectorType.VECTOR
    model: ModelSpec
    # The vectors served today are in this side table (in the table's schema, keyed by its
    # primary key): what an earlier migration with target.storage side_table left. None: a
    # column of the table.
    side_table: Ident | None = None


class TargetSpec(Frozen):
    column: Ident = "embedding_v2"
    type: VectorType = VectorType.VECTOR
    model: ModelSpec
    # side_table (the default): the vectors go to a table of their own keyed by the primary
    # key; the base table gets no row versions (docs/storage.md). column: ALTER TABLE ADD
    # COLUMN and UPDATE every row (each update a new row version, and an index entry in every
    # non-HOT index: the source column's HNSW index too).
    storage: Storage = Storage.SIDE_TABLE
    # The side table's name, in the table's schema; default "<table>_<column>".
    side_table: Ident | None = None


class RetrySpec(Frozen):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    backoff_base_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0


class PacingSpec(Frozen):
    """Pacing that protects search (docs/backfill.md "Pacing"): the backfill probes search
    latency through the view and slows or pauses every worker to keep p99 within a ratio of
    the baseline measured before the first batch. Tuning: may change mid-migration."""

    enabled: bool = True
    # The probe's p99 may be at most this multiple of the baseline p99 (below 1: always over,
    # even on an idle database; what the tests use to pause deterministically).
    max_p99_ratio: Annotated[float, Field(ge=0.01, le=100.0)] = 1.5
    probe_every_seconds: Annotated[float, Field(ge=0.2, le=600)] = 5.0
    # k-NN queries per probe (sequential, from vectors already in the served column); the
    # baseline runs 4 probes' worth and keeps the median of their p99s.
    probe_queries: Annotated[int, Field(ge=5, le=2000)] = 50
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    # The lowest pace (share of the full rate) throttling goes to; over the limit at this
    # pace, the backfill pauses (pace 0) unless `pause` is false. Low: the rate a busy
    # database allows may be a few percent of the full one (docs/benchmarks.md, 7d).
    min_pace: Annotated[float, Field(gt=0, le=1)] = 0.01
    # Slow start: a backfill starts at this pace (not below min_pace) and grows (by half its
    # pace, at most 0.1, after 2 probes at a pace) while search stays under the limit. A fast backfill (a side
    # table fills 100k rows in ~10 s here) would otherwise be over before the first probe
    # could slow it. 1: start at the full rate.
    start_pace: Annotated[float, Field(gt=0, le=1)] = 0.1
    pause: bool = True
    # Paused this long with search still over the limit, the slowness is not the backfill's
    # (nothing of it runs): go on at min_pace, without pausing, until search is back under.
    max_pause_seconds: Annotated[float, Field(ge=1, le=86_400)] = 300.0


class BackfillSpec(Frozen):
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 256
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    # Embedding requests in flight per task, so provider latency does not cap throughput.
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    retry: RetrySpec = RetrySpec()
    queue: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")] | None = None
    # A claimed batch not finished after this long is considered lost and enqueued again.
    stall_after_seconds: Annotated[int, Field(ge=10)] = 600
    # A running batch holds a lease its worker renews every lease_seconds / 4; once it expires
    # (the worker died) the monitor enqueues the batch again (docs/backfill.md: the bound).
    lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 20.0
    # The follower / beat catch-up retries failed batches after this cool-down (doubling each
    # round) and turns their rows into dead letters after dead_after_failures rounds.
    failed_cooldown_seconds: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    dead_after_failures: Annotated[int, Field(ge=1, le=100)] = 5
    # The repair sweep over NULL vectors runs at least this often, whatever the write rate.
    sweep_every_seconds: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    # Processed change records older than this are pruned (the last report's are kept).
    changes_retention_seconds: Annotated[float, Field(ge=0, le=30 * 86_400)] = 3600.0
    # Re-embed with the OLD model the rows change capture finds with an old vector of text they
    # no longer have, before cutover, so a rollback serves fresh vectors (docs/backfill.md).
    refresh_source: bool = True
    # The size the database may reach (its volume minus a margin): the backfill refuses to
    # start when its estimated growth would pass it. Unset: the free space of the server's
    # data directory when migrator can see it (a local server), else the check is skipped.
    max_database_size: Annotated[str, Field(pattern=r"^[0-9]+(kB|MB|GB|TB)$")] | None = None
    pacing: PacingSpec = PacingSpec()


class IndexSpec(Frozen):
    method: IndexMethod = IndexMethod.HNSW
    metric: Metric = Metric.COSINE
    name: Ident | None = None
    opclass: Ident | None = None
    m: Annotated[int, Field(ge=2, le=100)] = 16
    ef_construction: Annotated[int, Field(ge=4, le=1000)] = 64
    lists: Annotated[int, Field(ge=1, le=32768)] | None = None
    ef_search: Annotated[int, Field(ge=1, le=1000)] = 40
    probes: Annotated[int, Field(ge=1, le=32768)] = 10
    iterative_scan: IterativeScan = IterativeScan.OFF
    # Iterative scan limits (pgvector 0.8): hnsw.max_scan_tuples, hnsw.scan_mem_multiplier,
    # ivfflat.max_probes. None leaves the server's value.
    max_scan_tuples: Annotated[int, Field(ge=1)] | None = None
    scan_mem_multiplier: Annotated[float, Field(ge=1, le=1000)] | None = None
    max_probes: Annotated[int, Field(ge=1, le=32768)] | None = None
    # Tuning (not in the plan hash): "auto" sizes the build's memory to the HNSW graph of the
    # rows it indexes (plan/index_memory.py), within max_maintenance_work_mem and half the
    # server's memory when migrator can read it; a size sets it as given.
    maintenance_work_mem: Annotated[str, Field(pattern=r"^(auto|[0-9]+(kB|MB|GB|TB))$")] = "auto"
    max_maintenance_work_mem: Annotated[str, Field(pattern=r"^[0-9]+(kB|MB|GB|TB)$")] = "4GB"
    max_parallel_maintenance_workers: Annotated[int, Field(ge=0, le=64)] = 1
    # VACUUM (not FULL) the table after the backfill, before the build: a concurrent build
    # locks autovacuum out of the table for its whole duration.
    vacuum_before_build: bool = True

    def search_settings(self) -> dict[str, str]:
        """The session settings a search sets (SET LOCAL) for this index section, for either
        method: an HNSW and an IVFFlat index (the source's may differ) both read theirs."""
        # ivfflat knows relaxed_order only: strict ordering is an hnsw setting.
        ivf_scan = IterativeScan.RELAXED if self.iterative_scan is IterativeScan.STRICT else None
        out = {
            "hnsw.ef_search": str(self.ef_search),
            "hnsw.iterative_scan": self.iterative_scan.value,
            "ivfflat.probes": str(self.probes),
            "ivfflat.iterative_scan": (ivf_scan or self.iterative_scan).value,
        }
        if self.max_scan_tuples is not None:
            out["hnsw.max_scan_tuples"] = str(self.max_scan_tuples)
        if self.scan_mem_multiplier is not None:
            out["hnsw.scan_mem_multiplier"] = repr(float(self.scan_mem_multiplier))
        if self.max_probes is not None:
            out["ivfflat.max_probes"] = str(self.max_probes)
        return out


class ViewSpec(Frozen):
    name: Ident
    schema_: Ident | None = Field(None, alias="schema")
    columns: tuple[Ident, ...] = ()
    embedding_alias: Ident = "embedding"
    model_alias: Ident = "embedding_model"

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class VerifySpec(Frozen):
    sample_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    seed: int = 42
    min_coverage: Annotated[float, Field(ge=0, le=1)] = 1.0
    # The index gate is relative to production: the new index's recall@k at the search
    # settings may be at most this much below the source index's (what the service serves
    # today), both against exact results on the same sampled queries.
    max_recall_drop: Annotated[float, Field(ge=0, le=1)] = 0.02
    # An optional absolute floor on the new index's recall@k, on top of the relative gate.
    min_index_recall: Annotated[float, Field(ge=0, le=1)] | None = None
    # ef_search (HNSW) or probes (IVFFlat) values the ladder measures recall and latency at;
    # None: 40, 64, 100, 200, 400 for HNSW, 1, 5, 10, 20, 50 for IVFFlat (plus the current one).
    ladder: tuple[Annotated[int, Field(ge=1, le=32768)], ...] | None = None
    # The recall the ladder's recommendation aims for (the absolute floor when one is set).
    target_recall: Annotated[float, Field(ge=0, le=1)] = 0.9
    # Rows waiting in the change queue are the catch-up's lag: verify waits up to this long
    # for it to drain before it measures coverage (the lag left is reported, not a miss).
    catch_up_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # Optional gate on `verify --queries`: mean overlap@k of the two models' top k.
    min_query_overlap: Annotated[float, Field(ge=0, le=1)] | None = None
    min_recall_ratio: Annotated[float, Field(ge=0)] = 0.95
    max_invalid_vectors: Annotated[int, Field(ge=0)] = 0
    labelled_queries: str | None = None
    # Cutover refuses when more than this share of rows changed since the last report.
    max_stale_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01


class CutoverSpec(Frozen):
    lock_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    attempts: Annotated[int, Field(ge=1, le=1000)] = 30
    rollback_window_hours: Annotated[float, Field(ge=0)] = 24.0


class BridgeSpec(Frozen):
    """Bridge mode (docs/bridge.md): new-model queries mapped into the old index."""

    # Paired rows (both vectors set) read to fit the map, in bounded chunks.
    sample_rows: Annotated[int, Field(ge=10, le=1_000_000)] = 5000
    # Fewer paired rows than this and `bridge fit` refuses: the figures would mean nothing.
    min_rows: Annotated[int, Field(ge=10)] = 200
    # One paired row in this many is held out to choose the method and measure retention.
    holdout_every: Annotated[int, Field(ge=2, le=100)] = 5
    # `bridge on` refuses (unless --force) below this share of the new model's recall@k.
    min_retention: Annotated[float, Field(ge=0, le=1)] = 0.85


class DdlSpec(Frozen):
    lock_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    statement_timeout_ms: Annotated[int, Field(ge=0)] = 0
    attempts: Annotated[int, Field(ge=1, le=1000)] = 30


class Plan(Frozen):
    version: Literal[1]
    name: Annotated[str, AfterValidator(_migration_name)]
    description: str = ""
    table: TableSpec
    text: TextSpec
    source: SourceSpec
    target: TargetSpec
    backfill: BackfillSpec = BackfillSpec()
    index: IndexSpec = IndexSpec()
    view: ViewSpec
    verify: VerifySpec = VerifySpec()
    cutover: CutoverSpec = CutoverSpec()
    ddl: DdlSpec = DdlSpec()
    bridge: BridgeSpec = BridgeSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        idx, tgt = self.index, self.target
        if tgt.column == self.source.column:
            raise ValueError("target.column must differ from source.column")
        limit = INDEX_MAX_DIMS[tgt.type]
        if tgt.model.dimensions > limit:
            other = "halfvec (up to 4000)" if tgt.type is VectorType.VECTOR else "fewer dimensions"
            raise ValueError(
                f"target.model.dimensions {tgt.model.dimensions} exceeds the {idx.method.value} "
                f"limit of {limit} for {tgt.type.value}: use {other}"
            )
        if idx.method is IndexMethod.IVFFLAT and idx.metric is Metric.L1:
            raise ValueError("index.metric l1 is supported by hnsw only")
        expected = idx.metric.opclass(tgt.type)
        if idx.opclass is not None and idx.opclass != expected:
            raise ValueError(
                f"index.opclass {idx.opclass} does not match metric {idx.metric.value} on "
                f"{tgt.type.value}: use {expected} (or drop 'opclass')"
            )
        key = self.table.primary_key
        if key in self.text.columns:
            raise ValueError("the primary key cannot be part of the embedded text")
        reserved = {self.view.embedding_alias, self.view.model_alias}
        clash = reserved.intersection(self.view.columns)
        if clash:
            raise ValueError(
                f"view.columns may not contain {sorted(clash)}: they are added by migrator"
            )
        if tgt.side_table is not None and tgt.storage is not Storage.SIDE_TABLE:
            raise ValueError("target.side_table is set but target.storage is not side_table")
        names = [self.target.column, self.source.column, self.index_name]
        if tgt.storage is Storage.SIDE_TABLE:
            names.append(self.side_table)
            if self.side_table == self.table.name:
                raise ValueError("target.side_table must differ from table.name")
            if self.side_table == self.source.side_table:
                raise ValueError(
                    "target.side_table must differ from source.side_table (set target.side_table)"
                )
        if self.source.side_table == self.table.name:
            raise ValueError("source.side_table must differ from table.name")
        for n in names:
            _identifier(n)
        return self

    # ---- derived names (deterministic, so reruns find what earlier runs created) ----
    @property
    def queue(self) -> str:
        return self.backfill.queue or f"migrator.{self.name}.{self.target.column}"

    @property
    def index_name(self) -> str:
        default = f"{self.table.name}_{self.target.column}_{self.index.method.value}_idx"
        return self.index.name or _short(default)

    @property
    def side_table(self) -> str:
        """The side table of storage side_table (in the table's schema)."""
        return self.target.side_table or _short(f"{self.table.name}_{self.target.column}")

    @property
    def side(self) -> bool:
        return self.target.storage is Storage.SIDE_TABLE

    @property
    def view_schema(self) -> str:
        return self.view.schema_ or self.table.schema_

    @property
    def capture(self) -> CaptureNames:
        """Names of the change capture for a new migration (a running one stores its own)."""
        return capture_names(self.name)

    @property
    def trigger_name(self) -> str:
        return self.capture.trigger

    @property
    def function_name(self) -> str:
        return self.capture.function

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def plan_hash(self) -> str:
        """Hash of what defines the migration (defaults filled in, comments and order ignored).

        Tuning sections (backfill, verify, cutover, ddl, bridge), the description, the index's
        search-time settings (SEARCH_KEYS) and its build settings (TUNING_INDEX_KEYS) are left
        out: an operator may change a rate limit, a threshold, ef_search or the build's memory
        mid-migration, never the table, text, models, index DDL or view.
        """
        structural = _without_column_storage(
            {k: v for k, v in self.canonical().items() if k not in TUNING_KEYS}
        )
        skip = SEARCH_KEYS | TUNING_INDEX_KEYS
        structural["index"] = {k: v for k, v in structural["index"].items() if k not in skip}
        return _digest(structural)

    def legacy_plan_hash(self) -> str:
        """The hash as migrator computed it before search settings were tuning (ef_search,
        probes and iterative_scan in it): migrations registered then are still recognised."""
        structural = _without_column_storage(
            {k: v for k, v in self.canonical().items() if k not in TUNING_KEYS}
        )
        skip = {"max_scan_tuples", "scan_mem_multiplier", "max_probes"} | TUNING_INDEX_KEYS
        structural["index"] = {k: v for k, v in structural["index"].items() if k not in skip}
        return _digest(structural)


def _without_column_storage(structural: dict[str, Any]) -> dict[str, Any]:
    """Column storage, the only one before side tables (and the default until side_table
    became it), leaves the hash as it was: migrations registered before the setting existed
    are still recognised once their plan says `storage: column`."""
    target = dict(structural["target"])
    if target.get("storage") == Storage.COLUMN.value and target.get("side_table") is None:
        target.pop("storage", None)
        target.pop("side_table", None)
    source = dict(structural["source"])
    if source.get("side_table", "") is None:
        source.pop("side_table")
    return {**structural, "target": target, "source": source}


def _digest(structural: dict[str, Any]) -> str:
    blob = json.dumps(structural, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CaptureNames(NamedTuple):
    trigger: str
    function: str


def capture_names(name: str) -> CaptureNames:
    """Trigger and function names unique per migration name, within 63 bytes.

    "docs-v2" and "docs_v2" read alike once '-' becomes '_': a short hash of the exact name
    keeps them apart (before, the second expand rewrote the first one's function).
    """
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    # 9 ("migrator_") + 34 + 1 + 8 + 11 ("_capture_fn") = 63
    stem = f"migrator_{name.replace('-', '_')[:34]}_{digest}"
    return CaptureNames(f"{stem}_capture", f"{stem}_capture_fn")


def legacy_capture_names(name: str) -> CaptureNames:
    """The names derived before they were made unique: migrations registered then keep them."""
    base = f"migrator_{name.replace('-', '_')}"
    return CaptureNames(_short(f"{base}_capture"), _short(f"{base}_capture_fn"))


def _short(name: str) -> str:
    """Keep derived names within 63 bytes, deterministically."""
    if len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENTIFIER_BYTES - 9]}_{digest}"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out.replace("schema_", "schema")


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at `loc` (for the keys a typo could have meant)."""
    cls: type[BaseModel] = Plan
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in cls.model_fields.items()}
        fields.update(cls.model_fields)
        field = fields.get(part)
        if field is None:
            return None
        inner = _find_model(field.annotation)
        if inner is None:
            return None
        cls = inner
    return cls


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    cls = _model_at(loc)
    if cls is None:
        return []
    return sorted(f.alias or name for name, f in cls.model_fields.items())


def _problem(err: Any) -> tuple[str, str]:
    """(field path, message) of one pydantic error, in the plan file's own words."""
    loc = tuple(err.get("loc", ()))
    field = _format_loc(loc)
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else field
        msg = f"unknown key `{key}`"
        close = difflib.get_close_matches(key, _known_keys(loc[:-1]), n=1, cutoff=0.6)
        if close:
            msg += f": did you mean `{close[0]}`?"
    elif kind == "missing":
        msg = "required key is missing"
    return field, msg


def parse_plan(data: Any, *, path: str = "<plan>") -> Plan:
    """Validate already-parsed YAML data; raise one PlanError naming every problem, sorted by
    field path: the first one in the message, the others (one line each) in `more`."""
    if not isinstance(data, dict):
        raise PlanError("the plan must be a YAML mapping (key: value)", path=path)
    if data.get("version") != 1:
        raise PlanError(
            f"unsupported version {data.get('version')!r}",
            path=path,
            field="version",
            hint="this migrator reads 'version: 1'",
        )
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = sorted({_problem(err) for err in exc.errors()})
        (field, msg), rest = problems[0], problems[1:]
        unknown = any(m.startswith("unknown key") for _, m in problems)
        hint = "the keys are listed in docs/plan-reference.md" if unknown else None
        more = tuple(f"{path}:{f}: {m}" if f else f"{path}: {m}" for f, m in rest)
        raise PlanError(msg, path=path, field=field, hint=hint, more=more) from None


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError("file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read the file: {exc}", path=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PlanError(f"YAML syntax error: {problem}", path=str(p), field=where) from None
    return parse_plan(data, path=str(p))
