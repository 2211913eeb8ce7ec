"""The plan file model: a frozen, validated, hashable description of one migration.

Pure: no database, no network, no environment reads. `load_plan` reads a YAML file and turns
every problem into one `PlanError` line naming the file, the field path and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

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


TUNING_KEYS = frozenset({"description", "backfill", "verify", "cutover", "ddl"})
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


class TargetSpec(Frozen):
    column: Ident = "embedding_v2"
    type: VectorType = VectorType.VECTOR
    model: ModelSpec


class RetrySpec(Frozen):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    backoff_base_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0


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
    # Re-embed with the OLD model the rows change capture finds with an old vector of text they
    # no longer have, before cutover, so a rollback serves fresh vectors (docs/backfill.md).
    refresh_source: bool = True
    # The size the database may reach (its volume minus a margin): the backfill refuses to
    # start when its estimated growth would pass it. Unset: the free space of the server's
    # data directory when migrator can see it (a local server), else the check is skipped.
    max_database_size: Annotated[str, Field(pattern=r"^[0-9]+(kB|MB|GB|TB)$")] | None = None


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
    # Tuning (not in the plan hash): "auto" sizes the build's memory to the HNSW graph of the
    # rows it indexes (plan/index_memory.py), within max_maintenance_work_mem and half the
    # server's memory when migrator can read it; a size sets it as given.
    maintenance_work_mem: Annotated[str, Field(pattern=r"^(auto|[0-9]+(kB|MB|GB|TB))$")] = "auto"
    max_maintenance_work_mem: Annotated[str, Field(pattern=r"^[0-9]+(kB|MB|GB|TB)$")] = "4GB"
    max_parallel_maintenance_workers: Annotated[int, Field(ge=0, le=64)] = 1
    # VACUUM (not FULL) the table after the backfill, before the build: a concurrent build
    # locks autovacuum out of the table for its whole duration.
    vacuum_before_build: bool = True


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
    min_index_recall: Annotated[float, Field(ge=0, le=1)] = 0.9
    min_recall_ratio: Annotated[float, Field(ge=0)] = 0.95
    max_invalid_vectors: Annotated[int, Field(ge=0)] = 0
    labelled_queries: str | None = None
    # Cutover refuses when more than this share of rows changed since the last report.
    max_stale_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01


class CutoverSpec(Frozen):
    lock_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    attempts: Annotated[int, Field(ge=1, le=1000)] = 30
    rollback_window_hours: Annotated[float, Field(ge=0)] = 24.0


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
        names = [self.target.column, self.source.column, self.index_name]
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

        Tuning sections (backfill, verify, cutover, ddl), the index build's settings
        (TUNING_INDEX_KEYS) and the description are left out: an operator may change a rate
        limit, a threshold or the build's memory mid-migration, never the table, text, models,
        index or view.
        """
        structural = {k: v for k, v in self.canonical().items() if k not in TUNING_KEYS}
        structural["index"] = {
            k: v for k, v in structural["index"].items() if k not in TUNING_INDEX_KEYS
        }
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


def parse_plan(data: Any, *, path: str = "<plan>") -> Plan:
    """Validate already-parsed YAML data; raise PlanError with one line for the first problem."""
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
        err = exc.errors()[0]
        field = _format_loc(tuple(err.get("loc", ())))
        kind = err.get("type", "")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown key"
            hint = "check the spelling against docs/plan-reference.md"
        elif kind == "missing":
            msg = "required key is missing"
            hint = None
        else:
            hint = None
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise PlanError(msg, path=path, field=field, hint=hint) from None


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
