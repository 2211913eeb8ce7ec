"""migrations.trigger_name / function_name: the change capture's names, stored at registration.

Names were derived from the migration name alone, so "docs-v2" and "docs_v2" shared one
function. New migrations get names with a hash of the exact name; rows registered before keep
the names they were created with (filled in here), so a running migration's trigger is never
orphaned by the new derivation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from migrator.plan.model import legacy_capture_names

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"


def upgrade() -> None:
    op.add_column("migrations", sa.Column("trigger_name", sa.Text()), schema=S)
    op.add_column("migrations", sa.Column("function_name", sa.Text()), schema=S)
    conn = op.get_bind()
    for (name,) in conn.execute(sa.text("SELECT name FROM migrator.migrations")).fetchall():
        names = legacy_capture_names(name)
        conn.execute(
            sa.text(
                "UPDATE migrator.migrations SET trigger_name = :t, function_name = :f "
                "WHERE name = :n"
            ),
            {"t": names.trigger, "f": names.function, "n": name},
        )


def downgrade() -> None:
    op.drop_column("migrations", "function_name", schema=S)
    op.drop_column("migrations", "trigger_name", schema=S)
