"""A misbehaving Webapp, as one table: per fault, what the client sees, how many attempts reached
the Webapp, how many logins were tried, and that the gateway recovers by itself once the Webapp is
healthy again.

Each row injects one fault at one moment (``when``):

- ``warm``: into a gateway that holds a token, before one client ``POST /v1/messages``;
- ``startup``: before the gateway starts, so its background login at start-up meets it; the
  client's request comes once that login has had its outcome;
- ``revoked``: into the login that a client's request starts after the Webapp revoked the token;
- ``load``: while 20 workers keep sending ``POST /v1/messages``.

Then the fault is healed (most are used up by the one exchange), readiness must turn 200 within a
bounded wait and without any client traffic, and a batch of requests must all succeed with an
exact number of further logins.

Counts are exact: attempts are the arrivals at the Webapp of the request's own ``X-Request-ID``;
logins are the login requests that reached the Webapp (``Simulator.login_attempts``, summed over
restarts). Details proven elsewhere are not repeated here: the bodies and metrics of 502 and 504
and aiohttp's one resend of an idempotent method (``test_failures.py``), the backoff against
wrong credentials and a single login for many concurrent requests (``test_login_flow.py``), the
backoff against a Webapp refusing every token (``test_replay.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Literal

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway.simulator import Fault, LoginFault, Seen, Simulator

from .conftest import API_KEY, MESSAGE, PASSWORD, MakeRig, Rig, until

MESSAGES = "/v1/messages"
# A first retry 0.15 to 0.3 s after a failed login: late enough that what the client and the
# readiness check see right after the failure is still the failure, early enough to be quick.
ENV = {"GATEWAY_LOGIN_BACKOFF_INITIAL": "0.3", "GATEWAY_LOGIN_BACKOFF_MAX": "0.6"}
SHORT_UPSTREAM = {"GATEWAY_UPSTREAM_TIMEOUT": "0.3", "GATEWAY_UPSTREAM_IDLE_TIMEOUT": "0.3"}
SHORT_LOGIN = {"GATEWAY_LOGIN_TIMEOUT": "0.3"}
BOUND = 10.0  # seconds any step may take before the test fails rather than hangs
TIMEOUT = aiohttp.ClientTimeout(total=BOUND)
RECOVERY_BOUND = 3.0  # seconds the gateway gets to turn ready again without client traffic
WORKERS, PER_WORKER = 20, 25
RECOVERY_BATCH = 5

When = Literal["warm", "startup", "revoked", "load"]


class NotRecovered(AssertionError):
    """The gateway did not turn ready by itself once the Webapp was healthy again."""


@dataclass(frozen=True)
class Restart:
    """The Webapp's server stops (its port refuses connections); healing starts a new simulator
    on the same port with the accounts but none of the tokens (``Simulator.restarted``). At
    ``startup`` the gateway starts while nothing listens on the port."""


@dataclass(frozen=True)
class RejectAllTokens:
    """The Webapp answers 401 to every token, fresh ones included, until healed."""


Injection = Fault | LoginFault | Restart | RejectAllTokens
Serve = Callable[[Simulator, int], Awaitable[TestServer]]


@dataclass(frozen=True)
class Scenario:
    """One row: a fault, and everything counted while it lasted and after it was healed.

    - ``answer``: the client's status, with `` cut`` when the answer broke off after its status
      line; for a ``load`` row, the set of answers allowed.
    - ``attempts``: arrivals of the client's request at the Webapp. For a ``load`` row: the most
      arrivals of any one request that the Webapp acted on (a 401 refuses before acting; the
      one replay it causes is the arrival that may act).
    - ``logins``: login requests that reached the Webapp from the fault until the answer (for a
      ``load`` row, until the load ended); ``failures``: the kinds of failed logins the gateway
      logged meanwhile; ``ready``: the readiness status right after the answer.
    - ``recovery_logins``: login requests from then until the recovery batch succeeded.
    """

    name: str
    when: When
    fault: Injection
    _: KW_ONLY
    answer: str | frozenset[str]
    attempts: int
    logins: int
    failures: frozenset[str] = frozenset()
    ready: int
    recovery_logins: int
    env: Mapping[str, str] = field(default_factory=dict)


SCENARIO_NAMES = [
    # The Webapp cannot be reached, or breaks the exchange.
    "port_closed",
    "port_closed_at_startup",
    "reset_before_request_sent",
    "reset_after_request_sent",
    "response_cut_mid_body",
    "response_framing_breaks_mid_body",
    "headers_never_come",
    "body_trickles_within_timeout",
    "body_trickles_past_timeout",
    # Its login answers are broken, each met at start-up and after a revocation.
    "login_invalid_json_at_startup",
    "login_invalid_json_after_revocation",
    "login_empty_200_at_startup",
    "login_empty_200_after_revocation",
    "login_answer_oversized_at_startup",
    "login_answer_oversized_after_revocation",
    "login_expires_after_missing_at_startup",
    "login_expires_after_missing_after_revocation",
    "login_expires_after_unreadable_at_startup",
    "login_expires_after_unreadable_after_revocation",
    "login_expires_after_iso_format_at_startup",
    "login_expires_after_iso_format_after_revocation",
    "login_token_already_expired_at_startup",
    "login_token_already_expired_after_revocation",
    "login_slower_than_timeout_at_startup",
    "login_slower_than_timeout_after_revocation",
    "login_500_then_200_at_startup",
    "login_500_then_200_after_revocation",
    "login_connection_reset_at_startup",
    "login_connection_reset_after_revocation",
    # It refuses every token; it restarts under load.
    "webapp_answers_401_to_everything",
    "webapp_restart_during_load",
]

# A login that produced no usable token, by kind.
INVALID = frozenset({"invalid_answer"})
UNAVAILABLE = frozenset({"webapp_unavailable"})
REJECTED = frozenset({"token_rejected"})

# fmt: off
SCENARIOS = [
    Scenario("port_closed", "warm", Restart(),
        answer="502", attempts=0, logins=0, ready=200, recovery_logins=1),
    Scenario("port_closed_at_startup", "startup", Restart(),
        answer="503", attempts=0, logins=0, failures=UNAVAILABLE, ready=503, recovery_logins=1),
    Scenario("reset_before_request_sent", "warm", Fault("reset_before", MESSAGES),
        answer="502", attempts=1, logins=0, ready=200, recovery_logins=0),
    Scenario("reset_after_request_sent", "warm", Fault("reset_after", MESSAGES),
        answer="502", attempts=1, logins=0, ready=200, recovery_logins=0),
    Scenario("response_cut_mid_body", "warm", Fault("cut_body", MESSAGES),
        answer="200 cut", attempts=1, logins=0, ready=200, recovery_logins=0),
    # The Webapp keeps the connection open: only the framing says the answer is broken. The
    # long idle timeout makes a gateway that waited for it fail the test's bound.
    Scenario("response_framing_breaks_mid_body", "warm", Fault("bad_chunk", MESSAGES),
        answer="200 cut", attempts=1, logins=0, ready=200, recovery_logins=0,
        env={"GATEWAY_UPSTREAM_IDLE_TIMEOUT": "600"}),
    Scenario("headers_never_come", "warm", Fault("stall", MESSAGES),
        answer="504", attempts=1, logins=0, ready=200, recovery_logins=0,
        env=SHORT_UPSTREAM),
    # Ten silences of 0.05 s, 0.5 s in all: the timeout is for silence, not for the whole body.
    Scenario("body_trickles_within_timeout", "warm", Fault("trickle", MESSAGES, delay=0.05),
        answer="200", attempts=1, logins=0, ready=200, recovery_logins=0,
        env=SHORT_UPSTREAM),
    Scenario("body_trickles_past_timeout", "warm", Fault("trickle", MESSAGES, delay=1.0),
        answer="200 cut", attempts=1, logins=0, ready=200, recovery_logins=0,
        env=SHORT_UPSTREAM),
    Scenario("login_invalid_json_at_startup", "startup", LoginFault("invalid_json"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_invalid_json_after_revocation", "revoked", LoginFault("invalid_json"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_empty_200_at_startup", "startup", LoginFault("empty"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_empty_200_after_revocation", "revoked", LoginFault("empty"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_answer_oversized_at_startup", "startup", LoginFault("oversized"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_answer_oversized_after_revocation", "revoked", LoginFault("oversized"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_expires_after_missing_at_startup", "startup", LoginFault("no_expiry"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_expires_after_missing_after_revocation", "revoked", LoginFault("no_expiry"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_expires_after_unreadable_at_startup", "startup", LoginFault("bad_expiry"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_expires_after_unreadable_after_revocation", "revoked",
        LoginFault("bad_expiry"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    # The other known format of expires_after is read, not refused: nothing fails.
    Scenario("login_expires_after_iso_format_at_startup", "startup", LoginFault("iso_expiry"),
        answer="201", attempts=1, logins=1, ready=200, recovery_logins=0),
    Scenario("login_expires_after_iso_format_after_revocation", "revoked",
        LoginFault("iso_expiry"),
        answer="201", attempts=2, logins=1, ready=200, recovery_logins=0),
    Scenario("login_token_already_expired_at_startup", "startup", LoginFault("expired"),
        answer="503", attempts=0, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_token_already_expired_after_revocation", "revoked", LoginFault("expired"),
        answer="503", attempts=1, logins=1, failures=INVALID, ready=503, recovery_logins=1),
    Scenario("login_slower_than_timeout_at_startup", "startup", LoginFault("hang"),
        answer="503", attempts=0, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1,
        env=SHORT_LOGIN),
    Scenario("login_slower_than_timeout_after_revocation", "revoked", LoginFault("hang"),
        answer="503", attempts=1, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1,
        env=SHORT_LOGIN),
    Scenario("login_500_then_200_at_startup", "startup", LoginFault("status", 500),
        answer="503", attempts=0, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1),
    Scenario("login_500_then_200_after_revocation", "revoked", LoginFault("status", 500),
        answer="503", attempts=1, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1),
    Scenario("login_connection_reset_at_startup", "startup", LoginFault("reset"),
        answer="503", attempts=0, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1),
    Scenario("login_connection_reset_after_revocation", "revoked", LoginFault("reset"),
        answer="503", attempts=1, logins=1, failures=UNAVAILABLE, ready=503, recovery_logins=1),
    # The replay with a fresh token is refused too, for the second time in a row: that 401 is
    # the Webapp's, passed through, and the refusal counts as a failed login.
    # Healed, the background task logs in once more and checks that token before readiness
    # returns: no request has to come (none would, to a gateway whose readiness says 503).
    Scenario("webapp_answers_401_to_everything", "warm", RejectAllTokens(),
        answer="401", attempts=2, logins=1, failures=REJECTED, ready=503, recovery_logins=1),
    # 502 for the requests in flight when the Webapp stopped and for those its closed port
    # refused, 201 for all others: no 500, no broken answer, and no 503 either, since the token
    # served until the restarted Webapp refused it. Then exactly one login, at the new Webapp.
    Scenario("webapp_restart_during_load", "load", Restart(),
        answer=frozenset({"201", "502"}), attempts=1, logins=1, ready=200, recovery_logins=0),
]
# fmt: on
assert [s.name for s in SCENARIOS] == SCENARIO_NAMES


@dataclass(eq=False)
class Stage:
    """The gateway under test and the Webapp behind it; a restart replaces the Webapp."""

    rig: Rig
    serve: Serve
    sim: Simulator  # the Webapp now
    port: int  # where the gateway expects it
    server: TestServer | None  # None while nothing listens on the port
    earlier: list[Simulator] = field(default_factory=list)  # the Webapps before restarts
    # Login attempts and logged login failures before the fault: the fault's are those after.
    logins_before: int = 0
    failures_before: int = 0
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def seen(self) -> list[Seen]:
        """Every request that reached any of the Webapps, in order of arrival."""
        return [seen for sim in (*self.earlier, self.sim) for seen in sim.seen]

    def login_attempts(self) -> int:
        """Login requests that reached any of the Webapps."""
        return sum(sim.login_attempts for sim in (*self.earlier, self.sim))

    def failures(self) -> list[str]:
        """The kinds of the failed logins the gateway logged, in order."""
        return [event["kind"] for event in self.rig.logs.named("token.login_failed")]

    def mark(self) -> None:
        """Remember the counts before the fault."""
        self.logins_before, self.failures_before = self.login_attempts(), len(self.failures())

    async def stop(self) -> None:
        """Stop the Webapp's server: its port refuses connections from now on."""
        assert self.server is not None
        await self.server.close()
        self.server = None

    async def restart(self) -> None:
        """Serve a restarted Webapp (accounts kept, tokens gone) on the same port."""
        assert self.server is None
        self.earlier.append(self.sim)
        self.sim = self.sim.restarted()
        self.server = await self.serve(self.sim, self.port)

    async def send(self) -> tuple[str, str]:
        """One client POST /v1/messages with an id of its own: the id and what the client saw."""
        request_id = f"fault-{next(self._ids)}"
        headers = {"X-Request-ID": request_id}
        try:
            async with self.rig.client.post(
                "/v1/messages", json=MESSAGE, headers=headers, timeout=TIMEOUT
            ) as response:
                try:
                    await response.read()
                except aiohttp.ClientPayloadError:
                    return request_id, f"{response.status} cut"
                return request_id, str(response.status)
        except aiohttp.ClientError as exc:  # not expected of any row: shown in the assertion
            return request_id, type(exc).__name__

    async def readyz(self) -> int:
        """The gateway's readiness status."""
        async with self.rig.client.get("/_gateway/readyz", timeout=TIMEOUT) as response:
            return response.status


async def set_up(scenario: Scenario, make_rig: MakeRig, serve: Serve, closed_port: int) -> Stage:
    """The gateway with the fault injected at the scenario's moment (``load`` injects later)."""
    env: dict[str, str | None] = {**ENV, **scenario.env}
    fault = scenario.fault
    if scenario.when != "startup":
        rig = await make_rig(env=env)
        assert rig.webapp.port is not None
        stage = Stage(rig, serve, rig.sim, rig.webapp.port, rig.webapp)
        assert (await stage.send())[1] == "201"  # the gateway holds a token
        stage.mark()
        if scenario.when != "load":
            await inject(stage, fault)
        if isinstance(fault, RejectAllTokens):
            # One refused fresh token may be a revocation racing the login: the gateway logs in
            # again at once. The row measures the request after that, the second refusal.
            assert (await stage.send())[1] == "401"
            pool, account = rig.gateway.pool, rig.gateway.webapp.account
            await until(lambda: pool.seconds_left(account) > 0)
            stage.mark()
        if scenario.when == "revoked":
            stage.sim.revoke_all()
        return stage
    sim = Simulator(password=PASSWORD, password_change_required=False, api_key=API_KEY)
    if isinstance(fault, Restart):  # the gateway starts while nothing listens on its port
        env["WA_WEBAPP_URL"] = f"http://127.0.0.1:{closed_port}"
    else:
        assert isinstance(fault, LoginFault)
        sim.login_script.append(fault)
    rig = await make_rig(sim=sim, env=env)
    if isinstance(fault, Restart):
        stage = Stage(rig, serve, sim, closed_port, None)
    else:
        assert rig.webapp.port is not None
        stage = Stage(rig, serve, sim, rig.webapp.port, rig.webapp)
    # The background login at start-up has had its outcome before the client's request.
    await until(lambda: rig.logs.named("token.login") or rig.logs.named("token.login_failed"))
    return stage


async def inject(stage: Stage, fault: Injection) -> None:
    """Make the Webapp misbehave."""
    match fault:
        case Fault():
            stage.sim.faults = [fault]
        case LoginFault():
            stage.sim.login_script.append(fault)
        case RejectAllTokens():
            stage.sim.reject_all_tokens = True
        case Restart():
            await stage.stop()


async def heal(stage: Stage, fault: Injection) -> None:
    """Make the Webapp healthy again."""
    match fault:
        case RejectAllTokens():
            stage.sim.reject_all_tokens = False
        case Restart():
            await stage.restart()
        case _:  # a one-shot fault: the exchange used it up
            assert stage.sim.faults == []
            assert not stage.sim.login_script


async def load(stage: Stage, fault: Injection) -> dict[str, str]:
    """Steady traffic from ``WORKERS`` workers. A quarter of the way in, the Webapp holds every
    request until half the workers wait on it, and the fault strikes with those in flight; once
    a round of requests has met it, it is healed. What each client saw, by request id."""
    answers: dict[str, str] = {}

    async def worker() -> None:
        for _ in range(PER_WORKER):
            request_id, answer = await stage.send()
            answers[request_id] = answer

    async def disturb() -> None:
        await until(lambda: len(answers) >= WORKERS * PER_WORKER // 4)
        # Held until the Webapp stops (its pauses end at shutdown, and it hangs up on them).
        stage.sim.faults = [Fault("delay", MESSAGES, times=None, delay=BOUND)]
        await until(lambda: stage.sim.in_flight >= WORKERS // 2)
        await inject(stage, fault)
        met = len(answers) + WORKERS
        await until(lambda: len(answers) >= met)
        await heal(stage, fault)

    async with asyncio.timeout(BOUND), asyncio.TaskGroup() as group:
        for _ in range(WORKERS):
            group.create_task(worker())
        group.create_task(disturb())
    return answers


def acted_on_at_most(seen: list[Seen], answers: Mapping[str, str]) -> int:
    """The most arrivals of any one request the Webapp acted on; also checks that a request
    arrived twice only when the first arrival was refused with 401 (the one replay)."""
    arrivals: dict[str, list[int | None]] = {request_id: [] for request_id in answers}
    for record in seen:
        if record.request_id in arrivals and record.method == "POST":
            arrivals[record.request_id].append(record.status)
    for request_id, statuses in arrivals.items():
        assert len(statuses) <= 2, (request_id, statuses)
        assert len(statuses) < 2 or statuses[0] == 401, (request_id, statuses)
    return max(sum(status != 401 for status in statuses) for statuses in arrivals.values())


async def ready_by_itself(stage: Stage) -> None:
    """Readiness turns 200 within ``RECOVERY_BOUND``, without any client request."""
    try:
        async with asyncio.timeout(RECOVERY_BOUND):
            while await stage.readyz() != 200:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise NotRecovered(f"not ready {RECOVERY_BOUND} s after the Webapp was healthy") from None


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
async def test_webapp_fault(
    scenario: Scenario,
    make_rig: MakeRig,
    aiohttp_server: AiohttpServer,
    unused_tcp_port: int,
) -> None:
    """The client's answer, the attempts and logins at the Webapp, and recovery on its own."""

    async def serve(sim: Simulator, port: int) -> TestServer:
        return await aiohttp_server(sim.make_app(), port=port)

    stage = await set_up(scenario, make_rig, serve, unused_tcp_port)
    answer: str | frozenset[str]
    if scenario.when == "load":
        answers = await load(stage, scenario.fault)
        assert len(answers) == WORKERS * PER_WORKER
        answer = frozenset(answers.values())
        attempts = acted_on_at_most(stage.seen(), answers)
    else:
        request_id, answer = await stage.send()
        attempts = sum(seen.request_id == request_id for seen in stage.seen())
    logins_after = stage.login_attempts()
    observed = replace(
        scenario,
        answer=answer,
        attempts=attempts,
        logins=logins_after - stage.logins_before,
        failures=frozenset(stage.failures()[stage.failures_before :]),
        ready=await stage.readyz(),
    )
    assert observed == scenario

    if scenario.when != "load":  # the load healed its fault itself
        await heal(stage, scenario.fault)
    await ready_by_itself(stage)
    batch = await asyncio.gather(*(stage.send() for _ in range(RECOVERY_BATCH)))
    assert [answer for _, answer in batch] == ["201"] * RECOVERY_BATCH
    assert stage.login_attempts() - logins_after == scenario.recovery_logins
