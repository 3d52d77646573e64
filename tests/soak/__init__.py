"""The soak: a gateway process under minutes of mixed traffic, token revocations, expiries and
password rotations.

``python -m tests.soak --seconds 600`` (``make soak``) prints a report and exits 0 when every
expectation holds, 1 otherwise; ``tests/test_soak.py`` runs 30 seconds of it in ``make test``.

- The gateway runs as a subprocess (``tests.processes``), so its memory, descriptors and tasks
  are its own; the simulated Webapp and the clients share this process's event loop.
- Workers send a weighted mix: messages, contacts, health (API key), local client logins and
  logouts, uploads kept in memory and spooled to disk, downloads checked by sha256, slow senders
  and readers, and clients that hang up mid-transfer.
- A chaos task revokes or expires every Webapp token every few seconds, with calm phases longer
  than the (short) token lifetime so that the gateway's background refresh runs too.
- The gateway reads its password from ``WA_PASSWORD_FILE``, and every ``ROTATE_EVERY`` seconds of
  chaos an operator rotates it: ``python -m gateway rotate-password`` with the gateway's own
  settings, while the traffic flows. The Webapp's password changes alternately revoke the user's
  earlier tokens (the gateway's pooled one) and leave them valid, the two readings the Webapp's
  documentation allows. A revoking change costs the gateway one login, as a revocation does; the
  command's own logins are counted apart from the gateway's.
- Every answer is judged against what the Webapp answered to the same ``X-Request-ID``: a failure
  is explained only when it is the Webapp's own answer passed through (a 401 only once the
  replay was refused too). Anything else counts against the gateway.
- Memory (``/proc/<pid>/status``), descriptors (``/proc/<pid>/fd``, by kind) and asyncio tasks
  (the gateway's ``wa_gateway_asyncio_tasks`` gauge) are read before the traffic and again once
  it stopped and every idle connection was closed.

The modules, in the order a soak uses them:

- ``__main__``: the command's options; prints the report.
- ``run``: the run itself: the rig up, warm-up, traffic and chaos, the readings after.
- ``rig``: the simulated Webapp in this process and the gateway process in front of it.
- ``ledger``: the Webapp's answers by request id, and the clients' answers judged against them.
- ``traffic``: the clients' weighted mix of operations; ``bodies``: what they send and check.
- ``chaos``: revocations, expiries and rotations; ``rotation``: the operator who runs
  ``rotate-password``.
- ``observe``: the gateway's descriptors, metrics and log, read from outside it.
- ``report``: everything measured, the expectations, the printed report.
"""

from .ledger import judge
from .report import RSS_GROWTH_BOUND, SoakReport
from .run import run_soak

__all__ = ["RSS_GROWTH_BOUND", "SoakReport", "judge", "run_soak"]
