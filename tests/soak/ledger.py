"""Judging answers: what the Webapp answered each request (by ``X-Request-ID``), and the ledger
of what the clients saw, each answer judged against the Webapp's."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

REQUEST_ID = "X-Request-ID"


def judge(expected: int, outcome: int | str, webapp: list[int], *, replayable: bool) -> str:
    """What an answer means: ``ok``, ``webapp`` (the Webapp's failure, passed on) or the reason
    it is the gateway's failure. ``webapp`` lists the Webapp's statuses for the request, in order.
    """
    if outcome == expected:
        return "ok"
    if isinstance(outcome, str):
        return outcome  # no complete answer reached the client
    if not webapp or webapp[-1] != outcome:
        return f"the gateway answered {outcome}"
    if outcome == 401 and replayable and len(webapp) < 2:
        return "a 401 passed on without a replay"
    return "webapp"


@dataclass
class Ledger:
    """What the clients saw, judged."""

    requests: Counter[str] = field(default_factory=Counter)  # answered, by kind
    statuses: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0
    webapp_failures: int = 0
    hidden_401s: int = 0  # 401s the Webapp gave that the client never saw: replayed
    unexplained: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def served(self) -> int:
        return sum(self.requests.values())

    def record(
        self, kind: str, expected: int, outcome: int | str, webapp: list[int], *, replayable: bool
    ) -> None:
        """Count one request's outcome."""
        if isinstance(outcome, int):
            self.requests[kind] += 1
        self.statuses[str(outcome)] += 1
        if webapp[:1] == [401] and outcome == expected:
            self.hidden_401s += 1
        verdict = judge(expected, outcome, webapp, replayable=replayable)
        if verdict == "webapp":
            self.webapp_failures += 1
        elif verdict != "ok":
            self.unexplained += 1
            if len(self.samples) < 20:
                self.samples.append(f"{kind}: {verdict} (the Webapp answered {webapp})")


class WebappAnswers:
    """The Webapp's statuses for the requests clients are waiting on, by ``X-Request-ID``."""

    def __init__(self) -> None:
        self._pending: dict[str, list[int]] = {}
        self._issued = 0

    def open(self) -> str:
        """A new request id to watch."""
        self._issued += 1
        rid = f"soak-{self._issued}"
        self._pending[rid] = []
        return rid

    def close(self, rid: str) -> list[int]:
        """Stop watching ``rid``; the statuses the Webapp gave it."""
        return self._pending.pop(rid)

    async def on_response_prepare(self, request: web.Request, answer: web.StreamResponse) -> None:
        """The simulator app's hook (``on_response_prepare``)."""
        statuses = self._pending.get(request.headers.get(REQUEST_ID, ""))
        if statuses is not None:
            statuses.append(answer.status)
