"""Estimates for `migrator plan`: tokens, cost, duration and disk growth of a backfill.

Pure: takes counts and sizes measured elsewhere (db/server.py) and the plan; no database, no
network. The write-cost and index-size figures are calibrated on PostgreSQL 18.6 + pgvector
0.8.6 (bench/scale.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from migrator.plan.model import ModelSpec, Plan

# USD per million input tokens for well-known hosted models (override with
# `usd_per_million_tokens` in the plan's model section). Prices as published by the providers.
PRICES: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}

# Throughput assumed when the plan sets no rate limit and the provider was not calibrated: what
# one worker process reaches against a fast provider on a small machine without an HNSW index
# on the source column (see docs/benchmarks.md); used for the duration only.
ASSUMED_ROWS_PER_SECOND = 1000.0
# The database's side of a batch per row, in one worker (stage COPY, the compare-and-set
# write, the ledger), without an HNSW index on the source: with storage column an UPDATE of
# the table, with side_table an INSERT into the side table; and the fixed part of a run
# (expand, the workers' first batches, the last sweep). Fitted on bench/scale.py at 100k,
# 300k and 1M rows (2 workers, 256 dims, the local provider, 2-core machine, 2026-12-04):
# side_table took 10.0 / 23.3 / 103.2 s with HNSW on the source, 12.3 / 29.5 / 100.0 s
# without, column 9.6 / 36.0 / 96.6 s (the cost per row grows as the tables outgrow the
# cache); checked on fresh runs at 100k and 300k (docs/benchmarks.md, "Estimates").
DB_SECONDS_PER_ROW_COLUMN = 1.1e-4
DB_SECONDS_PER_ROW_SIDE = 1.0e-4
BACKFILL_FIXED_SECONDS = 3.0
# Worker processes `plan` assumes (backfill's default with the embedded broker; `--workers`).
DEFAULT_WORKERS = 2
# Each UPDATE of a row re-inserts its unchanged source vector into every HNSW index on the
# table (an index search to find the duplicate, then its heap TID is added): time per row in
# one worker's write, at 256 dimensions, m 16, ef_construction 64, on top of the database's
# side above; scaled by the index's dimensions and ef_construction. Measured: 100k rows in
# 89.7 s with the index vs 9.2 s without, 2 workers writing side by side: 0.81 ms of wall time
# a row, 1.62 ms in each worker. A loaded database pays several times more.
HNSW_REINSERT_SECONDS = 1.62e-3
HNSW_REINSERT_DIMS = 256
HNSW_REINSERT_EF = 64
PAGE = 8192
_PAGE_USABLE = 8192 - 24 - 16  # page header and pgvector's special space


@dataclass(frozen=True)
class Calibration:
    """A short measurement of the target provider (`plan` live sends it; `--no-calibrate`
    skips it): requests of one batch of sampled rows each, one after the other (the latency),
    then `concurrent` such requests at once (whether the provider serves requests in parallel:
    a hosted API does, a local single-process server does not)."""

    rows_per_request: int
    seconds: tuple[float, ...]  # wall time of each sequential request
    # (requests sent at once, wall time until the last answered); None: not measured.
    concurrent: tuple[int, float] | None = None

    @property
    def median_seconds(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[len(ordered) // 2] if ordered else 0.0

    @property
    def parallelism(self) -> float:
        """0 (requests at once take as long as one after the other) to 1 (as long as one):
        from the concurrent round; 1 when it was not measured."""
        if self.concurrent is None or self.concurrent[0] < 2 or self.median_seconds <= 0:
            return 1.0
        n, wall = self.concurrent
        speedup = n * self.median_seconds / max(wall, 1e-9)
        return min(1.0, max(0.0, (speedup - 1.0) / (n - 1)))

    def rows_per_second(self, in_flight: int) -> float:
        """The provider's rate with `in_flight` requests at once, scaled by the parallelism
        the concurrent round showed (latency-bound: an upper bound for a provider that slows
        down further under more concurrency than was measured)."""
        med = self.median_seconds
        if med <= 0:
            return math.inf
        return (1.0 + (max(1, in_flight) - 1) * self.parallelism) * self.rows_per_request / med

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": len(self.seconds),
            "rows_per_request": self.rows_per_request,
            "median_seconds": round(self.median_seconds, 4),
            "concurrent_requests": self.concurrent[0] if self.concurrent else None,
            "concurrent_seconds": round(self.concurrent[1], 4) if self.concurrent else None,
            "parallelism": round(self.parallelism, 3),
        }


def rows_per_request(plan: Plan, avg_tokens: float = 0.0) -> int:
    """Rows in one embedding request: the batch, cut by the model's input and token limits."""
    model = plan.target.model
    per_request = max(1, min(plan.backfill.batch_size, model.max_inputs_per_request))
    if avg_tokens > 0:
        per_request = max(1, min(per_request, int(model.max_tokens_per_request // avg_tokens)))
    return per_request


def worker_in_flight(plan: Plan, per_request: int) -> int:
    """Embedding requests one worker has in flight: its batch's requests, up to
    `backfill.concurrency` of them at a time."""
    batch_requests = math.ceil(plan.backfill.batch_size / max(1, per_request))
    return max(1, min(plan.backfill.concurrency, batch_requests))


def in_flight(plan: Plan, workers: int) -> int:
    """Embedding requests the whole backfill has in flight at once."""
    return max(1, workers) * worker_in_flight(plan, rows_per_request(plan))


def price_per_million(model: ModelSpec) -> float | None:
    if model.usd_per_million_tokens is not None:
        return model.usd_per_million_tokens
    if model.provider == "local" or model.name.startswith("local-"):
        return 0.0
    return PRICES.get(model.name)


@dataclass(frozen=True)
class IndexSize:
    name: str
    method: str  # pg_am.amname: btree, hnsw, ivfflat, gin...
    bytes: int
    dimensions: int = 0  # of the vector it indexes (hnsw/ivfflat)
    ef_construction: int = HNSW_REINSERT_EF


@dataclass(frozen=True)
class TableStorage:
    """Sizes of the table as the catalog reports them, and the room left for it to grow."""

    rows: int
    heap_bytes: int
    toast_bytes: int = 0
    indexes: tuple[IndexSize, ...] = ()
    database_bytes: int = 0
    # Bytes the database may still grow by: free disk (detected) or the plan's
    # backfill.max_database_size minus the database's size; None: not determinable.
    room_bytes: int | None = None
    room_source: str = ""  # how room_bytes was found, for the message


@dataclass(frozen=True)
class DiskGrowth:
    """What the column mode's backfill and index build add to the database."""

    rows: int
    heap_bytes: int  # one new row version per row, now carrying the new vector
    index_entries_bytes: int  # a new entry per row version in each non-HNSW index
    new_index_bytes: int  # the index the build adds on the target column
    room_bytes: int | None
    room_source: str

    @property
    def total_bytes(self) -> int:
        return self.heap_bytes + self.index_entries_bytes + self.new_index_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.room_bytes is None else self.total_bytes <= self.room_bytes


def vector_bytes(dimensions: int, halfvec: bool) -> int:
    return 8 + dimensions * (2 if halfvec else 4)


def hnsw_index_bytes(rows: int, dimensions: int, halfvec: bool, m: int) -> int:
    """On-disk size of an HNSW index (pgvector's element and neighbor tuples, 8 kB pages)."""
    upper = 1.0 / (m - 1)
    element = 8 * math.ceil((72 + vector_bytes(dimensions, halfvec)) / 8)
    neighbors = 8 * math.ceil((4 + 6 * (2 + upper) * m) / 8)
    per_row = element + neighbors + 8  # two line pointers
    per_page = max(1, _PAGE_USABLE // per_row)
    return math.ceil(max(0, rows) / per_page) * PAGE


# PostgreSQL's heap: a tuple header (23 bytes, aligned), a line pointer per tuple, values over
# ~2 kB moved out of line (TOAST) in chunks of up to 1,996 bytes, four chunk tuples a page.
_TUPLE_HEADER = 24
_LINE_POINTER = 4
_TOAST_THRESHOLD = 2032
_TOAST_CHUNK = 1996
_TOAST_POINTER = 18
# The side table's primary key (btree, 8-byte key): leaf tuples of 16 bytes + line pointer,
# pages left 90% full by ascending inserts (the key order of the backfill).
_BTREE_FILL = 0.9


def _align(n: int) -> int:
    return 8 * math.ceil(n / 8)


def side_table_bytes(rows: int, dimensions: int, halfvec: bool) -> tuple[int, int]:
    """(heap incl. TOAST, primary key index) of a side table of `rows` (key, vector) rows."""
    vec = vector_bytes(dimensions, halfvec)
    heap_page = PAGE - 24
    inline = _align(_TUPLE_HEADER + 8 + vec)
    if inline <= _TOAST_THRESHOLD:
        heap = math.ceil(rows / max(1, heap_page // (inline + _LINE_POINTER))) * PAGE
    else:
        small = _align(_TUPLE_HEADER + 8 + _TOAST_POINTER)
        heap = math.ceil(rows / max(1, heap_page // (small + _LINE_POINTER))) * PAGE
        chunks = rows * math.ceil(vec / _TOAST_CHUNK)
        heap += math.ceil(chunks / 4) * PAGE
        heap += math.ceil(chunks / max(1, int(heap_page * _BTREE_FILL) // 24)) * PAGE
    key = math.ceil(rows / max(1, int((PAGE - 40) * _BTREE_FILL) // (16 + _LINE_POINTER)))
    return heap, key * PAGE


def disk_growth(plan: Plan, storage: TableStorage, rows: int) -> DiskGrowth:
    """Growth of the plan's storage for `rows` rows still to fill (see docs/storage.md).

    Storage side_table: the side table (its heap and primary key) and the new index; the
    table itself does not grow. Column storage: as follows.

    Every row gets a new version (UPDATEs of a row already this size are almost never HOT)
    the size of the old one plus the new vector; the dead versions stay until vacuum, whose
    space the table then reuses but does not return. Every non-HNSW index (the primary key,
    say) gets one entry per new version; an HNSW index on the source column finds the same
    vector and adds the new heap TID to its element, so it hardly grows.
    """
    return _growth(plan, storage, rows, side=plan.side)


def _growth(plan: Plan, storage: TableStorage, rows: int, *, side: bool) -> DiskGrowth:
    tgt = plan.target
    halfvec = tgt.type.value == "halfvec"
    if side:
        heap, entries = side_table_bytes(rows, tgt.model.dimensions, halfvec)
    else:
        per_row = (storage.heap_bytes / storage.rows) if storage.rows else 0.0
        heap = math.ceil(rows * (per_row + vector_bytes(tgt.model.dimensions, halfvec) + 4))
        share = rows / storage.rows if storage.rows else 0.0
        entries = math.ceil(
            sum(i.bytes for i in storage.indexes if i.method not in ("hnsw", "ivfflat")) * share
        )
    if plan.index.method.value == "hnsw":
        new_index = hnsw_index_bytes(
            storage.rows or rows, tgt.model.dimensions, halfvec, plan.index.m
        )
    else:  # IVFFlat: one tuple of the vector per row
        new_index = math.ceil(
            (storage.rows or rows) * (vector_bytes(tgt.model.dimensions, halfvec) + 16)
        )
    return DiskGrowth(rows, heap, entries, new_index, storage.room_bytes, storage.room_source)


def write_seconds_per_row(storage: TableStorage | None, *, side: bool = False) -> float:
    """PostgreSQL time per row the source table's HNSW indexes add to each UPDATE (none in
    storage side_table: the table is not written)."""
    if storage is None or side:
        return 0.0
    return sum(
        HNSW_REINSERT_SECONDS
        * (max(i.dimensions, 1) / HNSW_REINSERT_DIMS)
        * (i.ef_construction / HNSW_REINSERT_EF)
        for i in storage.indexes
        if i.method == "hnsw"
    )


@dataclass(frozen=True)
class Estimate:
    rows: int
    avg_tokens: float
    tokens: int
    requests: int
    cost_usd: float | None
    seconds: float
    bound_by: str
    # Seconds of the database's writes per row (HNSW indexes on the table); 0 without them.
    index_write_seconds_per_row: float = 0.0
    disk: DiskGrowth | None = None
    calibration: Calibration | None = None
    workers: int = DEFAULT_WORKERS
    storage: str = "column"
    # The same figures for each storage mode, for the user's table: the trade-off.
    modes: tuple[tuple[str, float, int | None, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modes"] = {
            name: {
                "seconds": secs,
                "disk_bytes": disk,
                "index_write_seconds_per_row": write,
            }
            for name, secs, disk, write in self.modes
        }
        out["calibration"] = None if self.calibration is None else self.calibration.as_dict()
        if self.disk is not None:
            out["disk"] = {**asdict(self.disk), "total_bytes": self.disk.total_bytes}
            out["disk"]["fits"] = self.disk.fits
        return out


def estimate(
    plan: Plan,
    rows: int,
    token_counts: list[int],
    storage: TableStorage | None = None,
    *,
    calibration: Calibration | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Estimate:
    """Tokens, cost, duration and disk. The duration is the longest of: the rate limits; the
    pipeline (the calibrated provider rate with `workers` x `backfill.concurrency` requests in
    flight, or ASSUMED_ROWS_PER_SECOND uncalibrated, and the database's writes, shared by the
    workers) plus the source's HNSW index writes per row."""
    avg = (sum(token_counts) / len(token_counts)) if token_counts else 0.0
    tokens = math.ceil(avg * rows)
    model = plan.target.model
    per_request = rows_per_request(plan, avg)
    requests = math.ceil(rows / per_request) if rows else 0
    price = price_per_million(model)
    cost = None if price is None else round(tokens / 1e6 * price, 4)
    modes = []
    for side in (False, True):
        secs, _, w = _duration(
            plan, rows, tokens, requests, storage, calibration, workers, side, per_request
        )
        grows = _growth(plan, storage, rows, side=side).total_bytes if storage else None
        modes.append(("side_table" if side else "column", round(secs, 3), grows, round(w, 6)))
    seconds, bound_by, write = _duration(
        plan, rows, tokens, requests, storage, calibration, workers, plan.side, per_request
    )
    disk = disk_growth(plan, storage, rows) if storage is not None else None
    return Estimate(
        rows,
        round(avg, 2),
        tokens,
        requests,
        cost,
        round(seconds, 3),
        bound_by,
        round(write, 6),
        disk,
        calibration,
        workers,
        plan.target.storage.value,
        tuple(modes),
    )


def _duration(
    plan: Plan,
    rows: int,
    tokens: int,
    requests: int,
    storage: TableStorage | None,
    calibration: Calibration | None,
    workers: int,
    side: bool,
    per_request: int,
) -> tuple[float, str, float]:
    """(seconds, what bounds them, index write seconds per row) of one storage mode.

    A worker embeds a batch (its requests, up to `backfill.concurrency` at once, at the
    parallelism the calibration measured), then writes it: the two add up. The workers run
    side by side. A calibrated estimate adds the run's fixed part (BACKFILL_FIXED_SECONDS).
    """
    w = max(1, workers)
    write = write_seconds_per_row(storage, side=side)
    db = (DB_SECONDS_PER_ROW_SIDE if side else DB_SECONDS_PER_ROW_COLUMN) + write
    if calibration is not None:
        # One worker's requests run on threads of one process, as the calibration's
        # concurrent round did; workers are processes (often machines) of their own, whose
        # requests are taken not to slow each other's down.
        embed = 1.0 / calibration.rows_per_second(worker_in_flight(plan, per_request))
        per_row = (embed + db) / w
        label = "the measured provider rate" if embed >= db else "the database's writes"
    else:
        per_row = 1.0 / ASSUMED_ROWS_PER_SECOND + write / w
        label = "throughput (no rate limit set)"
    if write:
        label += " and the source's HNSW index writes"
    limits = {label: (BACKFILL_FIXED_SECONDS if rows and calibration else 0.0) + rows * per_row}
    if plan.backfill.requests_per_minute:
        limits["requests per minute"] = requests / plan.backfill.requests_per_minute * 60
    if plan.backfill.tokens_per_minute:
        limits["tokens per minute"] = tokens / plan.backfill.tokens_per_minute * 60
    if write == 0 and calibration is None and len(limits) > 1:
        limits.pop(label)
    bound_by, seconds = max(limits.items(), key=lambda kv: kv[1])
    return seconds, bound_by, write
