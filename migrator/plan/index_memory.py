"""How much memory an HNSW build needs, and the maintenance_work_mem to give it.

Pure: rows, dimensions and m in, bytes out. The per-element figure follows pgvector's in-memory
graph (src/hnswbuild.c, src/hnswutils.c, 0.8.x): one HnswElementData (128 bytes), the array of
neighbor-list pointers, one neighbor array of 2m candidates on layer 0 and m on each upper layer
(16 bytes per candidate), and the value itself, each allocation with an 8-byte chunk header.
Measured against the build's own "no longer fits after N tuples" notice on PostgreSQL 18.6 +
pgvector 0.8.6 (vector/halfvec, 64-1024 dims, m 8/16, serial and parallel): within 1%, high.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from migrator.plan.vocab import IndexMethod, VectorType

MB = 1024 * 1024
_CHUNK_HEADER = 8
_ELEMENT = 128  # sizeof(HnswElementData): 10 heap TIDs, pointers, an LWLock
_CANDIDATE = 16  # HnswCandidate: element pointer, float distance, bool
_ARRAY_HEADER = 8  # HnswNeighborArray: length, closerSet
_VARLENA_HEADER = 8  # vector/halfvec: vl_len_, dim, unused
# The graph's allocator works in blocks (up to 8 MB) and a parallel build keeps a 1 MB margin:
# the setting is the estimate plus this much, plus a share for the estimate's own error.
BUILD_MARGIN_BYTES = 16 * MB
BUILD_HEADROOM = 1.05
# PostgreSQL's default maintenance_work_mem: `auto` never gives less, unless the cap is lower.
MIN_SETTING_BYTES = 64 * MB
# Share of the server's memory one build may take when the server's memory is known.
SERVER_MEMORY_SHARE = 0.5

_SIZE_RE = re.compile(r"^([0-9]+)(kB|MB|GB|TB)$")
_UNITS = {"kB": 1024, "MB": MB, "GB": 1024 * MB, "TB": 1024 * 1024 * MB}


def parse_size(text: str) -> int:
    """'512MB' -> bytes (PostgreSQL's units: kB, MB, GB, TB are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"size {text!r} must be a number and one of kB, MB, GB, TB")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_setting(nbytes: int) -> str:
    """Bytes -> a maintenance_work_mem value, rounded up to a whole MB."""
    return f"{max(1, math.ceil(nbytes / MB))}MB"


def human(nbytes: float) -> str:
    for unit, size in (("GB", 1024 * MB), ("MB", MB), ("kB", 1024)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes:,.0f} B"


def _chunk(size: float) -> float:
    return size + _CHUNK_HEADER


def hnsw_bytes_per_row(dimensions: int, vector_type: VectorType, m: int) -> float:
    """Expected bytes of pgvector's in-memory HNSW graph per indexed row."""
    per_dim = 2 if vector_type is VectorType.HALFVEC else 4
    # A row's level is floor(-ln(U) / ln(m)): it reaches layer l with probability m**-l, so
    # it has 1/(m-1) upper layers on average.
    upper = 1.0 / (m - 1)
    element = _chunk(_ELEMENT)
    pointers = _chunk(8 * (1 + upper))  # (level + 1) pointers
    layer0 = _chunk(_ARRAY_HEADER + _CANDIDATE * 2 * m)
    layers = upper * _chunk(_ARRAY_HEADER + _CANDIDATE * m)
    value = _chunk(_VARLENA_HEADER + per_dim * dimensions)
    return element + pointers + layer0 + layers + value


def hnsw_graph_bytes(rows: int, dimensions: int, vector_type: VectorType, m: int) -> int:
    return math.ceil(max(0, rows) * hnsw_bytes_per_row(dimensions, vector_type, m))


@dataclass(frozen=True)
class BuildSizing:
    """The memory a build needs and the settings it gets; `fits` says whether the graph does."""

    rows: int
    graph_bytes: int  # estimate of the in-memory graph (0 for IVFFlat: not estimated)
    setting: str  # the maintenance_work_mem value the build session sets
    setting_bytes: int
    cap_bytes: int  # the lower of the plan's cap and the server's share, if known
    capped_by: str  # "plan" | "server memory" | "plan setting" (an explicit value)
    fits: bool
    workers: int
    server_memory_bytes: int | None = None

    def warning(self) -> str | None:
        if self.fits:
            return None
        return (
            f"the HNSW graph for {self.rows:,} rows needs about {human(self.graph_bytes)} but the "
            f"build gets maintenance_work_mem {self.setting} ({self.capped_by}): past that the "
            "build writes the graph to disk and slows several times; raise "
            "index.max_maintenance_work_mem (or set index.maintenance_work_mem: auto)"
        )

    def as_details(self) -> tuple[tuple[str, object], ...]:
        return (
            ("graph_estimate_bytes", self.graph_bytes),
            ("maintenance_work_mem", self.setting),
            ("parallel_workers", self.workers),
            ("fits", self.fits),
        )


def size_build(
    *,
    rows: int,
    dimensions: int,
    vector_type: VectorType,
    method: IndexMethod,
    m: int,
    setting: str,
    cap: str,
    workers: int,
    server_memory_bytes: int | None = None,
) -> BuildSizing:
    """Pick maintenance_work_mem: `setting` "auto" sizes it to the graph within the caps."""
    cap_bytes, capped_by = parse_size(cap), "plan cap index.max_maintenance_work_mem"
    if server_memory_bytes:
        share = int(server_memory_bytes * SERVER_MEMORY_SHARE)
        if share < cap_bytes:
            cap_bytes, capped_by = share, "half the server's memory"
    graph = hnsw_graph_bytes(rows, dimensions, vector_type, m) if method is IndexMethod.HNSW else 0
    if setting == "auto":
        wanted = max(MIN_SETTING_BYTES, math.ceil(graph * BUILD_HEADROOM) + BUILD_MARGIN_BYTES)
        chosen = min(wanted, cap_bytes)
        text = format_setting(chosen)
    else:
        text, capped_by = setting, "the plan's index.maintenance_work_mem"
    chosen = parse_size(text)
    return BuildSizing(
        rows=rows,
        graph_bytes=graph,
        setting=text,
        setting_bytes=chosen,
        cap_bytes=cap_bytes,
        capped_by=capped_by,
        fits=graph <= chosen,
        workers=workers,
        server_memory_bytes=server_memory_bytes,
    )
