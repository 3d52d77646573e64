"""The soak's report: everything one soak measured, the expectations it is held against, and
the report as printed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..harness.text import MiB, columns, mib
from .chaos import Chaos
from .ledger import Ledger
from .observe import Reading

# Growth is the end RSS minus the RSS after warm-up. A leak of a few hundred bytes per request
# passes it within minutes; the allocator's slack after the warm-up's peaks stays well below it.
RSS_GROWTH_BOUND = 24 * MiB
LOGIN_SLACK = 2  # the logins no chaos event or refresh explains: a start-up straggler, say


@dataclass
class SoakReport:
    """Everything one soak measured; :meth:`checks` holds it against the expectations."""

    seconds: float
    concurrency: int
    seed: int
    elapsed: float = 0.0
    ledger: Ledger = field(default_factory=Ledger)
    chaos: Chaos = field(default_factory=Chaos)
    logins: int = 0  # tokens the Webapp issued to the gateway while traffic flowed
    password_changes: int = 0  # the Webapp's count, at the end
    password_file_current: bool = False  # the file holds the Webapp's password, at the end
    password_next_left: bool = False  # a <file>.next was left, at the end
    start: Reading = field(default_factory=Reading)  # idle, before the traffic
    end: Reading = field(default_factory=Reading)  # idle again, after it
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    rss_peak: int = 0  # VmHWM
    rss_samples: list[int] = field(default_factory=list)
    spool_entries: int = 0  # files in the spool directory at the end (unlinked ones are not)
    exit_status: int | None = None
    log_problems: Counter[str] = field(default_factory=Counter)

    def grew(self, name: str, part: str = "") -> float:
        """How much a gateway metric grew between the start and the end."""
        return self.end.total(name, part) - self.start.total(name, part)

    @property
    def gateway_logins(self) -> float:
        return self.grew("wa_gateway_logins_total", "result=ok")

    @property
    def refreshes(self) -> float:
        return self.grew("wa_gateway_token_refreshes_total")

    @property
    def replays(self) -> float:
        return self.grew("wa_gateway_replays_total")

    @property
    def gateway_5xx(self) -> float:
        return self.grew("wa_gateway_requests_total", "status=5")

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_warm

    @property
    def login_budget(self) -> int:
        """The most logins the chaos (revoking rotations included) and the refreshes explain."""
        return self.chaos.events + int(self.refreshes) + LOGIN_SLACK

    def checks(self) -> list[tuple[bool, str]]:
        """(held, what) for every expectation."""
        ledger, start, end = self.ledger, self.start, self.end
        spool = end.fds.kinds["spool files"] + self.spool_entries
        return [
            (ledger.served > 0, f"requests served: {ledger.served:,}"),
            (
                ledger.unexplained == 0,
                f"no failure the Webapp did not make: {ledger.unexplained} unexplained",
            ),
            (self.gateway_5xx == 0, f"no 5xx in the gateway's metrics: {self.gateway_5xx:.0f}"),
            (
                self.chaos.events - 1 <= self.logins <= self.login_budget,
                f"a login per revocation, expiry, revoking rotation or refresh: {self.logins} "
                f"logins for {self.chaos.events} chaos events and {self.refreshes:.0f} refreshes "
                f"(at least {self.chaos.events - 1}, at most {self.login_budget})",
            ),
            (
                not self.chaos.rotation_failures and self.password_changes == self.chaos.rotations,
                f"every password rotation succeeded: {self.chaos.rotations} of "
                f"{self.chaos.rotations_tried}, {self.password_changes} password changes at the "
                "Webapp",
            ),
            (
                self.password_file_current and not self.password_next_left,
                "the password file holds the Webapp's password, no .next beside it: "
                f"{'holds it' if self.password_file_current else 'does not hold it'}, "
                f"{'.next left' if self.password_next_left else 'no .next'}",
            ),
            (
                self.rss_growth < RSS_GROWTH_BOUND,
                f"flat memory: RSS grew {mib(self.rss_growth)} after warm-up "
                f"(bound {mib(RSS_GROWTH_BOUND)})",
            ),
            (
                end.fds.total == start.fds.total,
                f"no leaked descriptors: {start.fds.total} at start, {end.fds.total} at end",
            ),
            (spool == 0, f"no spool file left, open or on disk: {spool}"),
            (
                start.tasks is not None and end.tasks == start.tasks,
                f"no leaked asyncio tasks: {start.tasks} at start, {end.tasks} at end",
            ),
            (
                not any(p.startswith(("error", "critical")) for p in self.log_problems),
                "no error in the gateway's log",
            ),
            (self.exit_status == 0, f"clean shutdown on SIGTERM: exit status {self.exit_status}"),
        ]

    @property
    def ok(self) -> bool:
        return all(held for held, _ in self.checks())

    def render(self) -> str:
        """The report as a two-column table, then the expectations."""
        ledger = self.ledger
        lines = ["wa-gateway soak", *columns(self.rows())]
        lines.append("expectations")
        lines += [f"  {'PASS' if held else 'FAIL'}  {what}" for held, what in self.checks()]
        lines += [f"  unexplained: {sample}" for sample in ledger.samples]
        lines += [f"  rotation failed: {problem}" for problem in self.chaos.rotation_failures[:20]]
        return "\n".join(lines)

    def rows(self) -> list[tuple[str, str]]:
        """What was measured, as (name, value) rows."""
        ledger = self.ledger
        rate = ledger.served / max(self.elapsed, 1.0)
        statuses = "  ".join(f"{s}: {n:,}" for s, n in sorted(ledger.statuses.items()))
        warnings = ", ".join(f"{k} x{n}" for k, n in sorted(self.log_problems.items()))
        return [
            (
                "traffic",
                f"{self.elapsed:.0f} s ({self.seconds:.0f} s asked), {self.concurrency} "
                f"workers, seed {self.seed}",
            ),
            ("requests served", f"{ledger.served:,} ({rate:.0f}/s)"),
            *((f"  {kind}", f"{n:,}") for kind, n in sorted(ledger.requests.items())),
            ("statuses", statuses),
            ("abandoned on purpose", f"{ledger.abandoned:,}"),
            ("401s hidden by replays", f"{ledger.hidden_401s:,} (replays: {self.replays:.0f})"),
            ("Webapp failures passed on", f"{ledger.webapp_failures:,}"),
            ("unexplained failures", f"{ledger.unexplained:,}"),
            ("revocations / expiries", f"{self.chaos.revocations} / {self.chaos.expiries}"),
            (
                "password rotations",
                f"{self.chaos.rotations} ok, {len(self.chaos.rotation_failures)} failed "
                f"(slowest {self.chaos.slowest_rotation:.1f} s); "
                f"{self.chaos.revoking_rotations} revoked the gateway's token; the Webapp "
                f"counted {self.password_changes} password changes",
            ),
            (
                "logins performed",
                f"{self.logins} issued by the Webapp to the gateway ({self.gateway_logins:.0f} "
                f"counted by the gateway, {self.refreshes:.0f} of them refreshes), "
                f"{self.password_changes} more to rotate-password",
            ),
            (
                "RSS start / warm / end",
                f"{mib(self.rss_start)} / {mib(self.rss_warm)} / {mib(self.rss_end)}",
            ),
            (
                "RSS peak",
                f"{mib(self.rss_peak)} (VmHWM; highest sample "
                f"{mib(max(self.rss_samples, default=0))})",
            ),
            ("open fds start / end", f"{_fds(self.start)} / {_fds(self.end)}"),
            ("  at start", self.start.fds.describe()),
            ("  at end", self.end.fds.describe()),
            (
                "asyncio tasks start / end",
                f"{_tasks(self.start)} / {_tasks(self.end)} (the scrape's own included)",
            ),
            ("gateway log warnings", warnings or "none"),
        ]


def _fds(reading: Reading) -> str:
    # The gateway's own count includes its scrape's connection and its listing of /proc/self/fd.
    scraped = reading.metrics.get("process_open_fds")
    return f"{reading.fds.total}" + ("" if scraped is None else f" (scraped: {scraped:.0f})")


def _tasks(reading: Reading) -> str:
    return (
        "not measured (no wa_gateway_asyncio_tasks)"
        if reading.tasks is None
        else f"{reading.tasks}"
    )
