"""The plan's statements as one runnable psql script (`migrator plan --sql`, alembic's
offline mode is the model): a comment per phase and step, every statement ended with `;`,
transactional statements inside BEGIN/COMMIT, CONCURRENTLY ones outside any block.

Pure: renders the same Statement objects the executor runs, without a connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from migrator.ddl.statements import Statement
from migrator.ddl.steps import Phase, Step
from migrator.plan.model import Plan

# The phases a forward run executes, in order. The backfill's statements are templates the
# workers run per batch with bound ids: shown as comments. Rollback and abort are the
# alternatives to the forward path: shown commented out, to run instead when needed.
FORWARD = (Phase.ADOPT, Phase.EXPAND, Phase.INDEX, Phase.CUTOVER, Phase.FINALIZE)
COMMENTED = (Phase.BACKFILL, Phase.ROLLBACK, Phase.ABORT)


def lock_timeout_ms(plan: Plan, phase: Phase) -> int:
    """The lock_timeout the executor uses for DDL of this phase."""
    if phase in (Phase.CUTOVER, Phase.ROLLBACK):
        return plan.cutover.lock_timeout_ms
    return plan.ddl.lock_timeout_ms


def _comment(text: str, prefix: str = "-- ") -> list[str]:
    return [f"{prefix}{line}".rstrip() for line in text.splitlines() or [""]]


def _block(plan: Plan, step: Step, statements: Iterable[Statement]) -> list[str]:
    """Statements of one step, with the transaction structure the executor gives them."""
    out: list[str] = []
    in_tx = tx_timeout = False
    timeout = lock_timeout_ms(plan, step.phase)
    for st in statements:
        if in_tx and (not st.transactional or st.new_transaction):
            out.append("COMMIT;")
            in_tx = False
        out.append("")
        out += _comment(f"{st.purpose} ({st.lock_text()})")
        if st.transactional and not in_tx:
            out.append("BEGIN;")
            in_tx, tx_timeout = True, False
        if st.ddl and not (st.transactional and tx_timeout):
            # psql does not retry a lock timeout as migrator does: rerun the script (every
            # statement is idempotent) if one fails with "canceling statement due to lock
            # timeout".
            scope = "LOCAL " if st.transactional else ""
            out.append(f"SET {scope}lock_timeout = '{timeout}ms';")
            tx_timeout = st.transactional
        out.append(f"{st.render()};")
        if st.ddl and not st.transactional:
            out.append("RESET lock_timeout;")
    if in_tx:
        out.append("COMMIT;")
    return out


def render_script(plan: Plan, steps: Iterable[Step], plan_path: str = "") -> str:
    by_phase = {s.phase: s for s in steps}
    lines = [
        f"-- migrator plan {plan_path or plan.name} --sql: migration {plan.name}",
        f"-- plan hash {plan.plan_hash()}",
        f"-- {plan.table.schema_}.{plan.table.name}: {plan.source.column} "
        f"({plan.source.model.fingerprint()}) -> {plan.target.column} "
        f"({plan.target.model.fingerprint()})",
        "-- Run with: psql -v ON_ERROR_STOP=1 -f THIS_FILE (not inside a transaction:",
        "-- CREATE INDEX CONCURRENTLY cannot run in one). migrator's own commands also check",
        "-- the rollback window, the verification gate and the backfill between these phases;",
        "-- this script does not.",
        "\\set ON_ERROR_STOP on",
    ]
    for phase in (*FORWARD, *COMMENTED):
        step = by_phase.get(phase)
        if step is None:
            continue
        lines += ["", "-- " + "=" * 76]
        lines += _comment(f"phase {phase.value}: {step.summary}")
        if phase in COMMENTED:
            why = (
                "run by the workers for each batch, with bound parameters"
                if phase is Phase.BACKFILL
                else "the alternative to the forward path: uncomment to run it instead"
            )
            lines += _comment(f"({why})")
        lines.append("-- " + "=" * 76)
        for note in step.notes:
            lines += _comment(f"note: {note}")
        body = _block(plan, step, step.forward)
        lines += _comment("\n".join(body), prefix="-- ") if phase in COMMENTED else body
    return "\n".join(lines) + "\n"
