"""The closed vocabularies of a plan: vector types, metrics, index methods, policies, limits.

Pure: enums and constants only. SQL keywords come from these enums, never from free text.
"""

from __future__ import annotations

from enum import StrEnum


class VectorType(StrEnum):
    VECTOR = "vector"
    HALFVEC = "halfvec"


class Metric(StrEnum):
    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"
    L1 = "l1"

    @property
    def operator(self) -> str:
        return {"cosine": "<=>", "l2": "<->", "inner_product": "<#>", "l1": "<+>"}[self.value]

    def opclass(self, vtype: VectorType) -> str:
        suffix = {"cosine": "cosine_ops", "l2": "l2_ops", "inner_product": "ip_ops", "l1": "l1_ops"}
        return f"{vtype.value}_{suffix[self.value]}"


class IndexMethod(StrEnum):
    HNSW = "hnsw"
    IVFFLAT = "ivfflat"


class IterativeScan(StrEnum):
    OFF = "off"
    RELAXED = "relaxed_order"
    STRICT = "strict_order"


class Role(StrEnum):
    """Which column a batch fills: the new one (target), or the old one kept fresh after cutover
    for rollback (source). Stored as text in migrator.batches and migrator.dead_letters."""

    TARGET = "target"
    SOURCE = "source"


class Storage(StrEnum):
    """Where the new vectors live: a column added to the table, or a table of their own keyed by
    the primary key (the base table gets no row versions, its indexes no churn)."""

    COLUMN = "column"
    SIDE_TABLE = "side_table"


class OverlongPolicy(StrEnum):
    TRUNCATE = "truncate"
    DEAD_LETTER = "dead_letter"


# Index limits of pgvector 0.8: dimensions an index can hold, per column type.
INDEX_MAX_DIMS = {VectorType.VECTOR: 2000, VectorType.HALFVEC: 4000}
COLUMN_MAX_DIMS = 16000
