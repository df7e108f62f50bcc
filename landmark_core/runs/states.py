"""A run's states, as an enum whose members are the strings status files hold."""
from __future__ import annotations

from ..core.enums import TextEnum


class RunState(TextEnum):
    """Where a run is; compares equal to its string (``status.json`` stores the string)."""
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process is gone without saying how it ended (killed, machine restarted)
    DAMAGED = "damaged"  # status.json cannot be read


ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING)
#: A run in one of these states ended before its last epoch and can be resumed from its last checkpoint.
RESUMABLE_STATES = (RunState.CANCELLED, RunState.INTERRUPTED, RunState.FAILED)

#: The error a run stopped by :func:`request_cancel` (the Stop button) records: a stop, not a failure.
STOPPED_BY_REQUEST = "stopped by request"
