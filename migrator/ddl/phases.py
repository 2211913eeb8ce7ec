"""The phases a migration can be in: the vocabulary shared by the state machine (state.py)
and by the steps that record a phase in their own transaction (steps.py).

Pure: names only; the guards and the records live in state.py.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PLANNED = "planned"
    EXPANDED = "expanded"
    BACKFILLED = "backfilled"
    VERIFIED = "verified"
    CUT_OVER = "cut_over"
    ROLLED_BACK = "rolled_back"
    # finalize has started: the view serves the new column, rollback is refused, the change
    # capture still runs until the last transaction; a rerun of finalize completes it.
    FINALIZING = "finalizing"
    FINALIZED = "finalized"
    # abort returned the table and the view to their state before adopt; history is kept.
    ABORTED = "aborted"
