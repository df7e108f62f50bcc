"""A run's states, as an enum whose members are the strings status files hold."""
from __future__ import annotations

import enum


class TextEnum(str, enum.Enum):
    """An enum whose members compare equal to, and print as, their string values (what the JSON files store)."""

    def __str__(self) -> str:
        return self.value


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

#: The error a run stopped by :func:`request_cancel` (the Stop button) records: a stop, not a failure.
STOPPED_BY_REQUEST = "stopped by request"
