"""What the phase statements depend on in the live database, as plain frozen data.

Pure: the catalog reads that fill these live in inspect / view_catalog; the defaults are the
offline assumptions (`migrator plan --offline`): no view yet, a new migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from migrator.ddl.viewdef import ViewBody
from migrator.plan.model import CaptureNames


class Privilege(StrEnum):
    """Every privilege PostgreSQL grants on a table or view, as aclexplode names it."""

    SELECT = "SELECT"
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"
    REFERENCES = "REFERENCES"
    TRIGGER = "TRIGGER"
    MAINTAIN = "MAINTAIN"  # PostgreSQL 17+; GRANT ALL includes it


@dataclass(frozen=True)
class Grant:
    """One entry of the view's ACL (or of a column's, when `column` is set)."""

    grantee: str  # a role name, or "PUBLIC"
    privilege: Privilege
    grantable: bool = False
    grantor: str | None = None  # None: the view's owner
    column: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON form, as stored in a migration's view snapshot."""
        return {
            "grantee": self.grantee,
            "privilege": self.privilege.value,
            "grantable": self.grantable,
            "grantor": self.grantor,
            "column": self.column,
        }


@dataclass(frozen=True)
class RegistryRow:
    """migrator.active_models for the view as adopt found it (another migration's, say)."""

    migration: str
    column: str
    fingerprint: str
    model_json: str
    vector_type: str
    dimensions: int
    switched_at: str


@dataclass(frozen=True)
class Facts:
    view_options: tuple[tuple[str, str], ...] = ()
    view_owner: str | None = None
    view_grants: tuple[Grant, ...] = ()
    source_indexes: tuple[str, ...] = ()
    pk_type: str = "bigint"
    live: bool = False
    # The view's definition with its managed columns located; None: the view adopt creates.
    view_body: ViewBody | None = None
    # Why the view's columns cannot be swapped (the steps that touch the view refuse).
    view_problem: str | None = None
    view_dependents: tuple[str, ...] = ()
    view_foreign_grantors: tuple[str, ...] = ()
    view_comment: str | None = None
    # Names of the change capture as stored at registration; None: derived from the plan.
    capture: CaptureNames | None = None
    # What abort restores: did adopt create the view, did the target column exist before?
    adopt_created_view: bool = True
    target_preexisted: bool = False
    prior_registry: RegistryRow | None = None
    # Rows the new index will hold and the server's memory (None: unknown; offline), which
    # size the index build's maintenance_work_mem (plan/index_memory.py).
    index_rows: int | None = None
    server_memory_bytes: int | None = None
