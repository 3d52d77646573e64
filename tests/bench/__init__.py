"""The benchmark: the gateway against the Webapp reached directly, a bare aiohttp proxy and nginx.

``python -m tests.bench`` (``make bench``) prints a table and exits 0 when every check holds, 1
otherwise; ``tests/test_bench.py`` runs a few seconds of it in ``make test``.

- Every server is a process of its own, so that none shares an event loop (or a GIL) with
  another or with the load: the Webapp simulator (``python -m tests.bench simulator``, plus a
  control port that counts its answers), the bare aiohttp proxy (``... proxy``), nginx (when
  it is on PATH) and the gateway (``python -m gateway serve``, log level warning).
- Four targets take the same load in turn. ``direct``: the simulator, the client sending the
  bearer token itself. ``aiohttp``: one ClientSession, one login at start, a fixed
  ``Authorization``, no policy, logging or metrics: the floor any aiohttp proxy pays. ``nginx``:
  one worker process (like the single event loop of the others), keep-alive upstream.
  ``gateway``.
- Two request shapes: ``message``, ``POST /v1/messages`` with a small JSON body (the everyday
  call), and ``media``, ``GET /v1/media/{id}`` of a 1 MiB object uploaded at start (streaming
  throughput: its requests/s are MiB/s).
- Load: ``wrk`` when on PATH (one thread, a Lua script whose ``done()`` prints the numbers as
  JSON), otherwise an aiohttp load generator in its own process (``... load``), the one the
  test uses. A one-second warm-up precedes every measured run.
- Cost: CPU seconds (utime + stime of the server's process tree, from ``/proc``) per 1000
  requests; on a small shared machine that is steadier than requests/s.
- Checks: the gateway answers nothing but 2xx and has no socket errors; for every target the
  simulator's own count of its 2xx answers agrees with the load generator (at least the 2xx it
  saw, at most what it completed plus one request in flight per connection); one download
  through every target matches the upload's sha256 before the load starts.

Every process is killed in a ``finally`` (its whole process group: nginx has a worker), every
wait has a deadline, the whole run has a hard limit printed at the start, and the simulator and
the bare proxy exit by themselves when the benchmark that started them is gone.

The modules:

- ``__main__``: the command: options, the hard limit, SIGTERM, the printed report; and the
  internal roles the benchmark starts as processes of their own.
- ``run``: one benchmark: the simulator and the targets up, checked, each loaded and measured.
- ``options``: what a benchmark is asked to do, and how long it may take.
- ``servers``: server processes started, polled until ready and stopped (group and all);
  ``errors``: what stops the benchmark.
- ``simulator`` and ``proxy``: the apps of the ``simulator`` and ``proxy`` roles;
  ``webapp``: the simulator process seen from the benchmark; ``nginx``: its configuration;
  ``targets``: where the load goes.
- ``shapes``: the request shapes and a load run's result; ``load``: one run, by ``wrk``
  (``wrk``: its script and result) or by the Python generator (``pyload``, the ``load`` role).
- ``report``: the rows measured, their checks, the printed tables.
"""

from .options import Options
from .report import Report
from .run import run_bench
from .shapes import MESSAGE, Shape
from .wrk import parse_wrk, wrk_script

__all__ = ["MESSAGE", "Options", "Report", "Shape", "parse_wrk", "run_bench", "wrk_script"]
