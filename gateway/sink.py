"""Where log lines go: a thread writes them, so that a slow reader cannot stall the gateway.

A process's standard output is often a pipe (a container runtime, ``| tee``, a log shipper). When
its reader falls behind, the pipe's buffer (64 KiB on Linux) fills and every write blocks; written
from the event loop, the very next log line would stop every request, the health checks
included. :class:`LineSink` takes lines from any thread without blocking and one daemon thread
writes them in order, in batches. While more than ``capacity`` lines wait, new ones are dropped
and counted (``wa_gateway_log_lines_dropped_total``); once the reader catches up, a ``log.dropped``
line says how many were lost. At exit, waiting lines get a bounded time to be written.
"""

from __future__ import annotations

import atexit
import json
import queue
import threading
import time
from typing import TextIO

# About 3 MiB of access lines: minutes of a slow reader at busy rates, bounded memory.
CAPACITY = 10_000
# Lines written with one write() and one flush() at most.
_BATCH = 4096
# After the first line of a batch, how long the thread lets more gather before it writes them:
# one wake-up per batch rather than per line keeps the event loop's thread from paying a thread
# switch for every line it logs (measured: 15% more CPU per request without it).
_GATHER = 0.01
# How long exit waits for the waiting lines.
_EXIT_WAIT = 2.0
_STOP = None


class LineSink:
    """A text stream for log handlers: ``write`` queues, a thread writes to ``stream``."""

    def __init__(self, stream: TextIO, capacity: int = CAPACITY) -> None:
        self.stream = stream
        self.capacity = capacity
        self.dropped = 0
        self._reported = 0
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_forever, name="log-sink", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, text: str) -> int:
        """Queue ``text`` (one whole line, as structlog and logging write them); never blocks."""
        if self._lines.qsize() >= self.capacity:
            self.dropped += 1
        else:
            self._lines.put(text)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the thread flushes after every batch."""

    def isatty(self) -> bool:
        """Whether the stream written to is a terminal."""
        return self.stream.isatty()

    def close(self, wait: float = _EXIT_WAIT) -> None:
        """Write what waits (for at most ``wait`` seconds), then stop the thread."""
        if self._thread.is_alive():
            self._lines.put(_STOP)
            self._thread.join(wait)
        atexit.unregister(self.close)

    def _write_forever(self) -> None:
        while True:
            batch = [self._lines.get()]
            time.sleep(_GATHER)
            while len(batch) < _BATCH and not self._lines.empty():
                batch.append(self._lines.get_nowait())
            stop = _STOP in batch
            lines = [line for line in batch if line is not _STOP]
            if self.dropped > self._reported:
                lines.append(self._drop_notice())
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nobody can be told
                self.dropped += len(lines)
            if stop:
                return

    def _drop_notice(self) -> str:
        lost, self._reported = self.dropped - self._reported, self.dropped
        notice = {
            "event": "log.dropped",
            "lines": lost,
            "details": "The log's reader fell behind; these lines were dropped.",
            "level": "warning",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return json.dumps(notice) + "\n"
