"""The sampled part of `verify`: freshness, the query sets (derived, labelled, real), one
streamed exact pass per column for all of them, then parity, labelled, agreement, vector
health and the index gate with its ladder.

Memory stays flat as the table grows: each column is read once in chunks (data.scan_column)
with a running top-k for every query at once (streaming.RunningTopK); no column is held whole.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from migrator.bridge import store as bridge_store
from migrator.db.catalog import vector_indexes
from migrator.db.context import Context
from migrator.embedding import Provider
from migrator.errors import ConfigError
from migrator.plan.model import IndexMethod, ModelSpec, Plan
from migrator.verify import agreement, bridge_check, checks, data, index_gate, ladder
from migrator.verify import labelled as verify_labelled
from migrator.verify.metrics import F32
from migrator.verify.report import Check, Section
from migrator.verify.streaming import RunningHealth, RunningTopK, chunk_rows

QUERY_MODES = ("span", "text")
Stage = Callable[[str], None]
LABEL_CHARS = 90


@dataclass(frozen=True)
class VerifyOptions:
    build_index: bool = True
    sample: int | None = None  # default: plan.verify.sample_size
    seed: int | None = None  # default: plan.verify.seed
    query_mode: str = "span"  # "span": 8-15 words of the row's text; "text": the whole text
    plan_dir: Path | None = None  # where a relative labelled_queries path is looked up first
    queries_file: Path | None = None  # real past queries, one per line (verify --queries)
    queries_column: str | None = None  # or [schema.]table.column holding them


class Timer:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.stage(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class QuerySet:
    """Texts embedded by both models; `keep`: the positions both embedded."""

    name: str
    texts: list[str]
    old: F32
    new: F32
    keep: list[int]

    @property
    def not_embedded(self) -> int:
        return len(self.texts) - len(self.keep)


def resolve_labelled(name: str, plan_dir: Path | None) -> Path:
    """An absolute path as is; a relative one next to the plan file first, then from the cwd."""
    p = Path(name)
    if p.is_absolute():
        return p
    if plan_dir is not None and (plan_dir / p).exists():
        return plan_dir / p
    return Path.cwd() / p


def _embed_set(
    name: str, texts: list[str], plan: Plan, old_p: Provider, new_p: Provider
) -> QuerySet:
    q_old, f_old = data.embed_all(old_p, plan.source.model, texts)
    q_new, f_new = data.embed_all(new_p, plan.target.model, texts)
    bad = set(f_old) | set(f_new)
    return QuerySet(name, texts, q_old, q_new, [i for i in range(len(texts)) if i not in bad])


def run(
    ctx: Context,
    opts: VerifyOptions,
    timer: Timer,
    index_state: str,
    old_p: Provider,
    new_p: Provider,
) -> tuple[list[Check], list[Section]]:
    """Every sampled check, in report order: health, freshness, index, parity, labelled,
    real queries (when given). Returns the checks and the report's sections."""
    plan, conn = ctx.plan, ctx.conn
    n = opts.sample or plan.verify.sample_size
    seed = plan.verify.seed if opts.seed is None else opts.seed
    k = plan.verify.k
    with timer.part("freshness sample"):
        t0 = time.perf_counter()
        ids, texts, stored = data.sample_with_vectors(conn, plan, plan.target.column, n, seed)
        emb, failed = data.embed_all(new_p, plan.target.model, texts)
        fresh = checks.freshness(plan, ids, stored, emb, failed, time.perf_counter() - t0)
    with timer.part("embed queries"):
        rows = data.sample_rows(
            conn, plan, n, seed, "parity", require=(plan.source.column, plan.target.column)
        )
        derived = _embed_set(
            "parity",
            data.queries_for([t for _, t in rows], seed, opts.query_mode),
            plan,
            old_p,
            new_p,
        )
        labels = _labelled_items(plan, opts)
        lab_set = _embed_set("labelled", [q for q, _ in labels], plan, old_p, new_p)
        real_texts = _real_queries(conn, opts, n)
        real = _embed_set("queries", real_texts or [], plan, old_p, new_p)
    sets = (derived, lab_set, real)
    # A fitted bridge is judged in the same streamed pass over the source column: the
    # new-model queries mapped into the old space, and (same dimensions) the naive swap.
    bridge = bridge_store.latest(conn, plan)
    extra: list[F32] = []
    if bridge is not None:
        q_new = derived.new[derived.keep]
        extra.append(bridge.map.apply(q_new) if len(q_new) else q_new)
        if plan.target.model.dimensions == plan.source.model.dimensions:
            extra.append(q_new)
    with timer.part("exact search (streamed, source column)"):
        old_exact, source_rows = _exact(
            conn,
            plan,
            plan.source.column,
            plan.source.model,
            [s.old[s.keep] for s in sets] + extra,
            k,
            None,
        )
    with timer.part("exact search (streamed, target column)"):
        health = RunningHealth(
            plan.target.model.dimensions,
            plan.target.model.normalize,
            1e-2 if plan.target.type.value == "halfvec" else 1e-3,
        )
        new_exact, _ = _exact(
            conn,
            plan,
            plan.target.column,
            plan.target.model,
            [s.new[s.keep] for s in sets],
            k,
            health,
        )
    health_check = checks.health(health.result(), plan)
    own = [rows[i][0] for i in derived.keep]
    par = checks.parity(plan, own, old_exact[0].ids, new_exact[0].ids, k, derived.not_embedded, 0.0)
    with timer.part("index recall and ladder"):
        idx, ladder_sec = _index(ctx, timer, index_state, derived, old_exact[0], new_exact[0])
    lab = (
        verify_labelled.labelled(
            plan,
            [labels[i][1] for i in lab_set.keep],
            old_exact[1].ids,
            new_exact[1].ids,
            k,
            0.0,
        )
        if labels
        else checks.skipped("labelled", "labelled queries", "no labelled_queries in the plan")
    )
    found = [health_check, fresh, idx, par, lab]
    if bridge is None:
        found.append(
            bridge_check.check(plan, None, None, "no bridge fitted (`migrator bridge fit PLAN`)")
        )
    else:
        found.append(
            bridge_check.from_exact(
                plan,
                bridge.id,
                bridge.replaces_source,
                source_rows,
                own,
                old_exact[0].ids,
                new_exact[0].ids,
                old_exact[3].ids,
                old_exact[4].ids if len(old_exact) > 4 else None,
            )
        )
    sections = [ladder_sec] if ladder_sec else []
    if real_texts is not None:
        kept = [real.texts[i] for i in real.keep]
        agree, per = agreement.agreement(
            plan, kept, old_exact[2].ids, new_exact[2].ids, real.not_embedded, 0.0
        )
        found.append(agree)
        if kept:
            shown = {
                pk for tops in (old_exact[2].ids, new_exact[2].ids) for top in tops for pk in top
            }
            names = data.row_labels(conn, plan, sorted(shown), LABEL_CHARS)
            sections.append(
                agreement.examples_section(
                    plan, kept, old_exact[2].ids, new_exact[2].ids, per, names
                )
            )
    return found, sections


def _labelled_items(plan: Plan, opts: VerifyOptions) -> list[tuple[str, list[str]]]:
    name = plan.verify.labelled_queries
    if not name:
        return []
    return verify_labelled.load_labelled(resolve_labelled(name, opts.plan_dir))


def _real_queries(conn: psycopg.Connection, opts: VerifyOptions, n: int) -> list[str] | None:
    if opts.queries_file is not None:
        return agreement.load_queries(opts.queries_file)
    if opts.queries_column is not None:
        got = data.queries_from_column(conn, opts.queries_column, n)
        if not got:
            raise ConfigError(
                f"{opts.queries_column} holds no query",
                hint="name a text column of past queries: [schema.]table.column",
            )
        return got
    return None


def _exact(
    conn: psycopg.Connection,
    plan: Plan,
    column: str,
    model: ModelSpec,
    query_sets: Sequence[F32],
    k: int,
    health: RunningHealth | None,
) -> tuple[list[checks.Exact], int]:
    """Exact top-k of every query set over `column`, in one streamed pass; and the number
    of rows it read."""
    sizes = [len(qs) for qs in query_sets]
    dims = model.dimensions
    allq = (
        np.concatenate([qs.reshape(len(qs), dims) for qs in query_sets])
        if sum(sizes)
        else np.zeros((0, dims), dtype=np.float32)
    )
    top = RunningTopK(allq, k, plan.index.metric)
    visitors = [top.add] + ([health.add] if health is not None else [])
    scanned, keys = data.scan_column(
        conn, plan, column, dims, visitors, top.positions, chunk_rows=chunk_rows(len(allq), dims)
    )
    out: list[checks.Exact] = []
    lo = 0
    for size in sizes:
        pos, dist = top.pos[lo : lo + size], top.dist[lo : lo + size]
        out.append(
            checks.Exact([[keys[int(p)] for p in row] for row in pos], dist.astype(np.float32))
        )
        lo += size
    return out, scanned


def production_subject(conn: psycopg.Connection, plan: Plan) -> ladder.Subject:
    """The index the service's query on the source column can use: valid, not partial, of the
    operator class the plan's metric searches with; none means the service scans exactly."""
    want = plan.index.metric.opclass(plan.source.type)
    on = plan.source.side_table or plan.table.name
    for ix in vector_indexes(conn, plan.table.schema_, on, plan.source.column):
        if ix.valid and not ix.partial and ix.opclass == want:
            return ladder.Subject(
                "production", plan.source.column, plan.source.type, ix.name, IndexMethod(ix.method)
            )
    return ladder.Subject("production", plan.source.column, plan.source.type, None, None)


def _index(
    ctx: Context,
    timer: Timer,
    index_state: str,
    derived: QuerySet,
    old_exact: checks.Exact,
    new_exact: checks.Exact,
) -> tuple[Check, Section | None]:
    plan, conn = ctx.plan, ctx.conn
    queries = len(derived.keep)
    if index_state != "valid" or queries == 0 or len(new_exact.distances) == 0:
        return checks.index_unusable(plan, index_state, queries), None
    k = plan.verify.k
    new_s = ladder.Subject(
        "new", plan.target.column, plan.target.type, plan.index_name, plan.index.method
    )
    prod_s = production_subject(conn, plan)
    total = len(
        ladder.ladder_values(
            plan, plan.index.method, ladder.current_value(plan, plan.index.method) or 1
        )
    )
    if prod_s.method is not None:
        cur = ladder.current_value(plan, prod_s.method) or 1
        total += len(ladder.ladder_values(plan, prod_s.method, cur))
    else:
        total += 1
    prod = ladder.measure(
        conn,
        plan,
        prod_s,
        derived.old[derived.keep],
        _kth(old_exact, k),
        k,
        progress=timer.stage,
        step=(0, total),
    )
    new = ladder.measure(
        conn,
        plan,
        new_s,
        derived.new[derived.keep],
        _kth(new_exact, k),
        k,
        progress=timer.stage,
        step=(len(prod.points), total),
    )
    rec = index_gate.recommend(plan, prod, new)
    check = index_gate.index_check(plan, prod, new, rec)
    details = dict(check.details)
    details["ladder"] = index_gate.ladder_details(prod, new, rec)
    check = Check(
        check.key,
        check.title,
        check.figure,
        check.threshold,
        check.comparison,
        check.status,
        check.summary,
        tuple(details.items()),
        check.seconds,
    )
    return check, index_gate.ladder_section(plan, prod, new, rec)


def _kth(exact: checks.Exact, k: int) -> list[float]:
    """The exact k-th distance per query (the last one when a column holds fewer than k)."""
    d = exact.distances
    if d.shape[1] == 0:
        return [float("inf")] * len(d)
    return [float(x) for x in d[:, min(k, d.shape[1]) - 1]]
