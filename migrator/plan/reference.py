"""Generate docs/plan-reference.md from the plan model, so the reference cannot drift from it.

Pure: walks the pydantic models. `python -m migrator.plan.reference > docs/plan-reference.md`;
a unit test fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from migrator.plan.model import Plan

DESCRIPTIONS: dict[str, str] = {
    "version": "Plan file format version. Always 1.",
    "name": "Migration name: identifies it in migrator's schema, queues and object names "
    "(the trigger and function names carry a hash of it, so `docs-v2` and `docs_v2` differ).",
    "description": "Free text shown in runbooks and status.",
    "table": "The table the search service searches.",
    "table.schema": "Schema of the table.",
    "table.name": "Table name.",
    "table.primary_key": "Single-column primary key; batches are key ranges over it "
    "(composite keys, partitioned tables and row-level security on migrator's role are refused).",
    "text": "What is embedded: exactly one of `column` or `template`.",
    "text.column": "A text column embedded as is.",
    "text.template": "A template over columns, e.g. `\"{title}\\n\\n{body}\"`; NULL columns read as ''. A row is embedded only when at least one of its columns holds non-blank text (the literal text alone is never sent).",
    "source": "The column the view serves today and the model that produced it.",
    "source.column": "The current embedding column.",
    "source.type": "`vector` or `halfvec`.",
    "target": "The new column and the new model.",
    "target.column": "The new vector column: in the side table (storage `side_table`), or "
    "added to the table nullable (storage `column`; no table rewrite).",
    "target.type": "`vector` (indexable up to 2,000 dims) or `halfvec` (up to 4,000).",
    "source.side_table": "Where the served vectors live when an earlier migration used "
    "storage `side_table`: that side table's name (e.g. `documents_embedding_v2`). Unset: a "
    "column of the table.",
    "target.storage": "Where the new vectors live: `side_table` (the default: a table of "
    "their own keyed by the primary key, joined by the view at cutover; the table gets no row "
    "versions) or `column` (added to the table; every row rewritten once, each index on the "
    "table written again). A migration started before side_table became the default needs "
    "`column` here. See docs/storage.md.",
    "target.side_table": "The side table's name (storage `side_table`), in the table's "
    "schema; default `<table>_<column>`.",
    "*.model": "An embedding model.",
    "*.model.provider": "`openai` (any OpenAI-compatible server) or `local` (in-process hash model).",
    "*.model.name": "Model name sent to the server; local models are named `local-hash-*`.",
    "*.model.dimensions": "Vector dimensions (sent as `dimensions` when `send_dimensions`).",
    "*.model.base_url": "Server URL (default: OPENAI_BASE_URL, else OpenAI).",
    "*.model.api_key_env": "Name of the environment variable holding the key (never the key).",
    "*.model.send_dimensions": "Send the `dimensions` request parameter.",
    "*.model.normalize": "L2-normalise vectors before writing; part of the model fingerprint.",
    "*.model.max_inputs_per_request": "Inputs per embeddings request.",
    "*.model.max_tokens_per_request": "Tokens per embeddings request.",
    "*.model.max_tokens_per_input": "Tokens per input; longer inputs follow `overlong`.",
    "*.model.overlong": "`truncate` (and record it) or `dead_letter` over-long inputs.",
    "*.model.request_timeout_seconds": "Per-request timeout; the caller owns retries.",
    "*.model.usd_per_million_tokens": "Price override for cost estimates.",
    "backfill": "How the new column is filled (tuning: may change mid-migration).",
    "backfill.batch_size": "Rows per ledger batch (one Celery task).",
    "backfill.requests_per_minute": "Shared request budget of all workers (Redis token bucket).",
    "backfill.tokens_per_minute": "Shared token budget of all workers.",
    "backfill.concurrency": "Embedding requests in flight per task.",
    "backfill.retry": "Retries of a batch on retryable provider errors.",
    "backfill.retry.max_attempts": "Attempts before a batch is marked failed.",
    "backfill.retry.backoff_base_seconds": "First backoff; doubles each attempt, with full jitter.",
    "backfill.retry.backoff_max_seconds": "Backoff cap (a longer Retry-After is still honoured).",
    "backfill.queue": "Celery queue (default `migrator.<name>.<target column>`).",
    "backfill.stall_after_seconds": "A batch unfinished after this long is enqueued again.",
    "backfill.lease_seconds": "Lease of a running batch, renewed by its worker every quarter "
    "of it; a batch whose lease expired (its worker died) is enqueued again.",
    "backfill.failed_cooldown_seconds": "The follower retries failed batches after this "
    "cool-down, doubled each round.",
    "backfill.dead_after_failures": "Failure rounds after which the follower turns a failed "
    "batch's rows into dead letters.",
    "backfill.sweep_every_seconds": "The repair sweep over NULL vectors runs at least this "
    "often, whatever the write rate.",
    "backfill.changes_retention_seconds": "Processed change records older than this are pruned "
    "(those after the last verification report are kept).",
    "backfill.refresh_source": "Re-embed with the source model the rows whose old vector is of text they no longer have (found by change capture), so a rollback serves fresh vectors; cutover refuses while more than `verify.max_stale_fraction` of the rows remain. Needs the source model during the backfill. A tuning key.",
    "backfill.max_database_size": "The size the database may reach (its volume minus a margin). The backfill's pre-flight refuses to start (exit 16) when the estimated growth (new row versions, index entries, the new index) would pass it. Unset: the free space of the server's data directory when it is on this machine and readable, else the check is skipped with a warning. A tuning key.",
    "backfill.pacing": "Pacing that protects search (docs/backfill.md, Pacing): the backfill probes search latency through the view and slows or pauses every worker to keep the probe's p99 within `max_p99_ratio` of the baseline measured before its first batch. Tuning: every key may change mid-migration (workers and the running backfill follow within a probe).",
    "backfill.pacing.enabled": "Pace the backfill. Off: workers run at the full rate (within the rate budget) and no probe runs.",
    "backfill.pacing.max_p99_ratio": "The limit: the p99 of the last 3 probes at the current pace may be at most this multiple of the baseline p99. Over it the pace halves; under 0.75 of it, after 2 probes at the pace, the pace grows by half of itself (at most 0.1). Below 1 every probe is over it (a pause on demand).",
    "backfill.pacing.probe_every_seconds": "Seconds between probes (and between pace changes). Workers fall back to `min_pace` when the pace was not refreshed for 6 probes (at least 30 s): the coordinator stopped.",
    "backfill.pacing.probe_queries": "k-NN queries per probe, one after another, with query vectors taken from the served column; the baseline is the median p99 of 4 probes (after a warm-up).",
    "backfill.pacing.k": "LIMIT of the probe's k-NN queries (use the service's k).",
    "backfill.pacing.min_pace": "The lowest share of the full rate throttling goes to; over the limit at this pace the backfill pauses (when `pause`). A paused backfill resumes at this pace.",
    "backfill.pacing.start_pace": "Slow start: a new backfill starts at this share of the full rate (not below `min_pace`) and grows (by half of itself, at most 0.1, every 2 probes) while search stays under the limit, so a fast backfill cannot be over before the first probe could slow it. 1: start at the full rate. A restarted backfill resumes at the pace it left.",
    "backfill.pacing.pause": "Pause (pace 0) when search is over the limit at `min_pace`; false: keep `min_pace`, never stop.",
    "backfill.pacing.max_pause_seconds": "A pause this long with search still over the limit proves the slowness is not the backfill's (none of it runs): it goes on at `min_pace`, without pausing, until a probe is back under the limit.",
    "index": "The index built on the target column by `verify`.",
    "index.method": "`hnsw` or `ivfflat`.",
    "index.metric": "`cosine`, `l2`, `inner_product` or `l1` (hnsw only).",
    "index.name": "Index name (default `<table>_<column>_<method>_idx`).",
    "index.opclass": "Optional; must match metric and type (e.g. `vector_cosine_ops`).",
    "index.m": "HNSW graph degree.",
    "index.ef_construction": "HNSW build candidate list size.",
    "index.lists": "IVFFlat lists (default 100).",
    "index.ef_search": "HNSW search candidate list size the service uses; verify measures at it. A tuning key: may change mid-migration (the search client reads it from the stored plan).",
    "index.probes": "IVFFlat probes the service uses (tuning).",
    "index.iterative_scan": "pgvector 0.8 iterative scans: `off`, `relaxed_order`, `strict_order` (tuning).",
    "index.max_scan_tuples": "`hnsw.max_scan_tuples` for iterative scans (tuning; none: the server's).",
    "index.scan_mem_multiplier": "`hnsw.scan_mem_multiplier` for iterative scans (tuning).",
    "index.max_probes": "`ivfflat.max_probes` for iterative scans (tuning).",
    "index.maintenance_work_mem": "Memory of the build session: `auto` sizes it to the HNSW graph of the rows indexed (rows x (dimensions x 4, or 2 for halfvec, + m x 32 + ~330 bytes)), within `max_maintenance_work_mem` and half the server's memory when readable; or a size such as `2GB`. A graph that does not fit is written to disk and builds several times slower: `plan` warns. A tuning key (may change mid-migration).",
    "index.max_maintenance_work_mem": "Cap of the `auto` setting. A tuning key.",
    "index.max_parallel_maintenance_workers": "Parallel build workers (each needs a CPU; a parallel build keeps the graph in shared memory, so /dev/shm must hold it). A tuning key.",
    "index.vacuum_before_build": "`VACUUM (ANALYZE)` the table before the build (never FULL), so the backfill's dead row versions are reclaimed: the concurrent build locks autovacuum out of the table while it runs. A tuning key.",
    "view": "The view the search service reads.",
    "view.name": "View name.",
    "view.schema": "View schema (default: the table's).",
    "view.columns": "Table columns passed through the view.",
    "view.embedding_alias": "Name of the view's embedding column.",
    "view.model_alias": "Name of the view's constant model-fingerprint column.",
    "verify": "The verification gate (tuning).",
    "verify.sample_size": "Rows sampled for parity and index recall.",
    "verify.k": "k of recall@k.",
    "verify.seed": "Sampling seed (reproducible reports).",
    "verify.min_coverage": "Share of eligible rows that must have a target vector.",
    "verify.max_recall_drop": "The index gate: the new index's recall@k at the search settings may be at most this much below the production (source) index's, both against exact results on the same queries. 1 turns the relative gate off (then set `min_index_recall`).",
    "verify.min_index_recall": "Optional absolute floor on the new index's recall@k (on top of the relative gate); also the ladder's target when set.",
    "verify.ladder": "ef_search (HNSW) or probes (IVFFlat) values the ladder measures (default 40, 64, 100, 200, 400 / 1, 5, 10, 20, 50, plus the current one).",
    "verify.target_recall": "Recall@k the ladder's recommendation aims for.",
    "verify.catch_up_wait_seconds": "How long verify waits for the catch-up's lag to drop within `max_stale_fraction` before measuring coverage.",
    "verify.min_query_overlap": "Optional floor on overlap@k between the models on `verify --queries` (none: reported, not gated).",
    "verify.min_recall_ratio": "New model's self-retrieval recall / old model's.",
    "verify.max_invalid_vectors": "Zero, non-finite or wrong-dimension vectors allowed.",
    "verify.labelled_queries": "JSONL of {query, relevant: [ids]} for recall, MRR, nDCG.",
    "verify.max_stale_fraction": "Cutover refuses when more rows changed since the report.",
    "cutover": "The switch (tuning).",
    "cutover.lock_timeout_ms": "Lock timeout of each switch attempt.",
    "cutover.attempts": "Attempts before giving up (nothing applied).",
    "cutover.rollback_window_hours": "Finalize refuses before this (unless --force).",
    "ddl": "Other DDL: expand, finalize (tuning).",
    "ddl.lock_timeout_ms": "Lock timeout of each DDL attempt.",
    "ddl.statement_timeout_ms": "Statement timeout (0 = none).",
    "ddl.attempts": "Attempts before giving up (nothing applied).",
    "bridge": "Bridge mode: new-model queries mapped into the old index (tuning; docs/bridge.md).",
    "bridge.sample_rows": "Paired rows (old and new vector both set) `bridge fit` reads, in "
    "bounded chunks.",
    "bridge.min_rows": "`bridge fit` refuses with fewer paired rows than this.",
    "bridge.holdout_every": "One paired row in this many is held out: it chooses the method "
    "and measures retention.",
    "bridge.min_retention": "`bridge on` refuses (unless `--force`) when the bridge keeps less "
    "than this share of the new model's recall@k.",
}


FUNC_RULES = {
    "_identifier": "identifier: <= 63 bytes of letters, digits, _",
    "_migration_name": "1-40 of a-z, 0-9, _ or -, starting with a letter",
}


def _describe(path: str) -> str:
    if path in DESCRIPTIONS:
        return DESCRIPTIONS[path]
    generic = "*." + path.split(".", 1)[1] if "." in path else path
    return DESCRIPTIONS.get(generic, "")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ", ".join(f"`{m.value}`" for m in tp)
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _constraints(info: FieldInfo) -> str:
    out = []
    for m in info.metadata:
        for attr, sym in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "min length"),
            ("max_length", "max length"),
            ("pattern", "pattern"),
        ):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
        func = getattr(m, "func", None)
        if callable(func):
            out.append(FUNC_RULES.get(getattr(func, "__name__", ""), "validated"))
    return ", ".join(out)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    d = info.default
    if d is PydanticUndefined or isinstance(d, BaseModel):
        return "see below"
    if isinstance(d, enum.Enum):
        return f"`{d.value}`"
    if d is None:
        return "none"
    return f"`{d!r}`" if not isinstance(d, tuple) else f"`{list(d)!r}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        path = f"{prefix}{key}"
        ann = info.annotation
        nested = _nested_model(ann)
        if nested is not None:
            rows.append(f"| `{path}` | section | {_default(info)} | | {_describe(path)} |")
            rows += _rows(nested, path + ".")
            continue
        constraint = _constraints(info)
        rows.append(
            f"| `{path}` | {_type_name(ann)} | {_default(info)} | {constraint} | "
            f"{_describe(path)} |"
        )
    return rows


def _nested_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def render() -> str:
    head = [
        "# Plan file reference",
        "",
        "Generated from `migrator/plan/model.py` by `python -m migrator.plan.reference`; a test keeps "
        "it in step with the code. Unknown keys are errors. Identifiers are at most 63 bytes of "
        "letters, digits and underscores (never truncated, always quoted, so case-sensitive: "
        '`Docs` is the table created as `"Docs"`). The plan hash covers '
        "everything except `description`, `backfill`, `verify`, `cutover` and `ddl`, which may "
        "be tuned mid-migration; changing anything else is refused.",
        "",
        "Cross-field rules: `target.column` differs from `source.column`; target dimensions fit "
        "the index type (2,000 for `vector`, 4,000 for `halfvec`); `l1` needs `hnsw`; `opclass`, "
        "when given, matches metric and type; the primary key is not part of the text; "
        "`view.columns` does not contain the embedding or model aliases.",
        "",
        "| key | type | default | constraints | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    return "\n".join(head + _rows(Plan, "")) + "\n"


if __name__ == "__main__":
    print(render(), end="")
