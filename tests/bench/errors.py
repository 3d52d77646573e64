"""What stops the benchmark. Anything else that escapes it (a timeout, a client error) is
reported the same way by ``__main__``; this is for what the benchmark itself found wrong."""

from __future__ import annotations


class BenchError(Exception):
    """The benchmark cannot go on: a server did not start, a check before the load failed."""
