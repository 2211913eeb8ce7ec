"""Statements that point the search view at a column, restore what a re-created view loses,
and put the registry back: the view half of adopt, cutover, rollback and abort.

Pure: built from the plan and Facts; the user's own definition (Facts.view_body) is kept
verbatim and only its two managed columns are swapped (see viewdef).
"""

from __future__ import annotations

from psycopg import sql

from migrator.ddl import statements as q
from migrator.ddl.facts import Facts, Grant, RegistryRow
from migrator.ddl.statements import Lock, Statement
from migrator.errors import PreflightError
from migrator.plan.model import ModelSpec, Plan, VectorType


def definition(
    plan: Plan, column: str, vtype: VectorType, fingerprint: str, facts: Facts
) -> sql.Composable:
    """The view's query serving `column`: the user's with two columns swapped, or ours."""
    if facts.view_body is None:
        return q.view_select(plan, column, vtype, fingerprint)
    return facts.view_body.render(
        column,
        vtype,
        fingerprint,
        plan.view.embedding_alias,
        plan.view.model_alias,
        side_join=q.side_join(plan, column) if q.in_side(plan, column) else None,
    )


def switch(
    plan: Plan,
    column: str,
    vtype: VectorType,
    model: ModelSpec,
    facts: Facts,
    *,
    type_changes: bool,
) -> tuple[Statement, ...]:
    """Point the view at `column`, update the registry and announce it, in one transaction.

    Refuses (PreflightError) a view whose columns cannot be swapped, and a type change under
    dependent views: DROP VIEW would fail, or with CASCADE take them along.
    """
    view = q.view_label(plan)
    if facts.view_problem is not None:
        raise PreflightError(
            f"view {view}: {facts.view_problem}",
            hint="see docs/adopting-the-view.md; nothing was changed",
        )
    if type_changes and facts.view_dependents:
        raise PreflightError(
            f"view {view} has dependents ({', '.join(facts.view_dependents)}): the embedding "
            "type changes, which drops and re-creates the view",
            hint="drop them first and re-create them after the switch; nothing was changed",
        )
    fingerprint = model.fingerprint()
    body = definition(plan, column, vtype, fingerprint, facts)
    stmts: list[Statement] = []
    if type_changes:
        # CREATE OR REPLACE VIEW cannot change a column's type (vector -> halfvec): drop and
        # create in the same transaction, then restore owner, grants and comment.
        stmts.append(
            Statement(
                sql.SQL("DROP VIEW IF EXISTS {}").format(q.view_ident(plan)),
                "drop the view (its embedding column changes type)",
                Lock.ACCESS_EXCLUSIVE,
                view,
            )
        )
    stmts.append(
        Statement(
            q.create_or_replace_view(plan, body, facts.view_options),
            f"point the view at {column} ({fingerprint})",
            Lock.ACCESS_EXCLUSIVE,
            view,
        )
    )
    if type_changes:
        stmts.extend(restore_acl(plan, facts))
    return (*stmts, *register(plan, column, vtype, model))


def register(plan: Plan, column: str, vtype: VectorType, model: ModelSpec) -> tuple[Statement, ...]:
    """The registry names the column and model the view serves; NOTIFY tells the services."""
    return (
        Statement(
            q.upsert_active_model(plan, column, vtype, model),
            "record the active model in the registry",
            Lock.ROW_EXCLUSIVE,
            "migrator.active_models",
            ddl=False,
        ),
        Statement(q.notify_switch(plan), "announce the switch (NOTIFY)", ddl=False),
    )


def restore_acl(plan: Plan, facts: Facts) -> list[Statement]:
    """Owner, every grant (with grant option and grantor), column grants, the comment."""
    view = q.view_label(plan)
    out: list[Statement] = []
    if facts.view_owner:
        out.append(
            Statement(
                sql.SQL("ALTER VIEW {} OWNER TO {}").format(
                    q.view_ident(plan), sql.Identifier(facts.view_owner)
                ),
                "restore the view's owner",
                Lock.ACCESS_EXCLUSIVE,
                view,
            )
        )
    # Grants made by the owner first: a grant made by a grantee needs its grant option.
    ordered = sorted(facts.view_grants, key=lambda g: g.grantor not in (None, facts.view_owner))
    for g in ordered:
        what = f"{g.privilege.value} for {g.grantee}" + (
            f" on column {g.column}" if g.column else ""
        )
        # PostgreSQL records the current role as grantor: a grant made by a grantee (with its
        # grant option) is made again as that role, inside this transaction only.
        if g.grantor is not None:
            out.append(
                Statement(
                    sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(g.grantor)),
                    f"act as {g.grantor}, who made the next grant",
                    ddl=False,
                )
            )
        out.append(Statement(grant(plan, g), f"restore {what}", Lock.ACCESS_EXCLUSIVE, view))
        if g.grantor is not None:
            out.append(Statement(sql.SQL("RESET ROLE"), "act as migrator again", ddl=False))
    if facts.view_comment is not None:
        out.append(
            Statement(
                sql.SQL("COMMENT ON VIEW {} IS {}").format(
                    q.view_ident(plan), sql.Literal(facts.view_comment)
                ),
                "restore the view's comment",
                Lock.ACCESS_EXCLUSIVE,
                view,
            )
        )
    return out


def grant(plan: Plan, g: Grant) -> sql.Composable:
    """GRANT priv [(col)] ON view TO grantee [WITH GRANT OPTION], made by the current role."""
    cols: sql.Composable = (
        sql.SQL(" ({})").format(sql.Identifier(g.column)) if g.column else sql.SQL("")
    )
    to = sql.SQL("PUBLIC") if g.grantee == "PUBLIC" else sql.Identifier(g.grantee)
    option = sql.SQL(" WITH GRANT OPTION") if g.grantable else sql.SQL("")
    return sql.SQL("GRANT {}{} ON {} TO {}{}").format(
        sql.SQL(g.privilege.value), cols, q.view_ident(plan), to, option
    )


def drop_view(plan: Plan) -> Statement:
    return Statement(
        sql.SQL("DROP VIEW IF EXISTS {}").format(q.view_ident(plan)),
        "drop the view adopt created",
        Lock.ACCESS_EXCLUSIVE,
        q.view_label(plan),
    )


def restore_registry(plan: Plan, prior: RegistryRow | None) -> Statement:
    """The registry row as adopt found it: another migration's row back, or none."""
    if prior is None:
        query: sql.Composable = sql.SQL(
            "DELETE FROM migrator.active_models WHERE view_schema = {} AND view_name = {} "
            "AND migration = {}"
        ).format(sql.Literal(plan.view_schema), sql.Literal(plan.view.name), sql.Literal(plan.name))
        purpose = "remove the view's registry entry (adopt created it)"
    else:
        query = sql.SQL(
            "UPDATE migrator.active_models SET migration = {m}, column_name = {c}, "
            "fingerprint = {fp}, model = {model}::jsonb, vector_type = {vt}, dimensions = {d}, "
            "switched_at = {at}::timestamptz, bridge_id = NULL WHERE view_schema = {vs} "
            "AND view_name = {vn}"
        ).format(
            m=sql.Literal(prior.migration),
            c=sql.Literal(prior.column),
            fp=sql.Literal(prior.fingerprint),
            model=sql.Literal(prior.model_json),
            vt=sql.Literal(prior.vector_type),
            d=sql.Literal(prior.dimensions),
            at=sql.Literal(prior.switched_at),
            vs=sql.Literal(plan.view_schema),
            vn=sql.Literal(plan.view.name),
        )
        purpose = f"give the registry entry back to migration {prior.migration}"
    return Statement(query, purpose, Lock.ROW_EXCLUSIVE, "migrator.active_models", ddl=False)
