"""The reader limits in force (``data.limits``): what a file may make a reader allocate.

Readers are called from stages, the ``facekd data info`` command and DataLoader workers, so the
limits are process state set once from the params (:func:`set_limits`) rather than an argument
threaded through every reader; without a call the defaults of :class:`DataLimits` apply.
"""
from __future__ import annotations

from facekd.config import DataLimits

_active = DataLimits()


def set_limits(limits: DataLimits) -> None:
    """Use ``limits`` (normally ``params.data.limits``) for every reader of this process."""
    global _active
    _active = limits


def active_limits() -> DataLimits:
    return _active
