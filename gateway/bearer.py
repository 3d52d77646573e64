"""What the token pool hands out, and whose it is: :class:`Account` and :class:`Token` as plain
values, and the :class:`Clock` their times are read on.

Values only, no tasks and no I/O, apart from the pool (:mod:`gateway.tokens`) that obtains them:
:mod:`gateway.webapp`, which performs the logins, needs these and not the pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .secret import Secret


class Clock(Protocol):
    """Where the pool reads the time: a monotonic clock for intervals, a wall clock for dates."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class Account(NamedTuple):
    """Whose tokens: one Webapp user at one Webapp."""

    url: str
    username: str


@dataclass(frozen=True)
class Token:
    """A pooled token. Times are on the pool's monotonic clock."""

    value: Secret
    generation: int
    expires_at: float
    refresh_at: float

    @property
    def fingerprint(self) -> str:
        """A short name for the token, fit for logs."""
        return self.value.fingerprint()

    def authorization(self) -> str:
        """The ``Authorization`` value that carries the token: for the wire only, never a log."""
        return f"Bearer {self.value.reveal()}"
