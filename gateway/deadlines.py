"""Deadlines that follow progress: a silence timeout re-armed after every chunk, cheaply.

An ``asyncio.Timeout`` moved with ``reschedule`` cancels its timer and schedules a new one, and
a relay that moved it before every read and write spent more time on timers than on most of its
own work (7% of the gateway's CPU for small messages, measured with py-spy under ``make bench``).
:func:`extend` skips a move that would postpone the deadline by less than ``SLACK`` of the
timeout, so a silence is detected between ``1 - SLACK`` and 1 times the timeout after the last
progress, and a stream that keeps moving re-arms its timer at most ``1 / SLACK`` (50) times per
timeout, however many chunks it moves.
A move that brings the deadline closer (a shorter timeout for the next phase) always happens.
"""

from __future__ import annotations

import asyncio

SLACK = 0.02


def extend(deadline: asyncio.Timeout, when: float, timeout: float) -> None:
    """Move ``deadline`` to ``when`` (loop time) unless that postpones it by less than ``SLACK``
    of ``timeout``, the silence it enforces."""
    current = deadline.when()
    if current is None or when < current or when - current > timeout * SLACK:
        deadline.reschedule(when)
