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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.passwords import PasswordFile
from gateway.simulator import Simulator, synthetic_media_bytes, synthetic_media_sha256
from gateway.values import Invalid

from .conftest import API_KEY, PASSWORD
from .processes import (
    FRESH,
    REPO,
    GatewayProcess,
    child_env,
    free_port,
    gateway_env,
    running_gateway,
)

MiB = 1 << 20
DEFAULT_SECONDS = 600.0
MAX_SECONDS = 3600.0
DEFAULT_CONCURRENCY = 24
TOKEN_LIFETIME = 10.0  # seconds: short, so that the calm phases see background refreshes
CHAOS_CYCLE = 60.0  # each cycle: a calm phase, then revocations and expiries every few seconds
CHAOS_CALM = TOKEN_LIFETIME + 2.0
CHAOS_GAP = (1.0, 4.0)
# Seconds of chaos between password rotations (a rotation takes the place of a revocation or an
# expiry): a 30-second soak, whose chaos starts after the first calm phase, sees two.
ROTATE_EVERY = 8.0
ROTATE_TIMEOUT = 30.0  # for one rotate-password run: a loaded machine's start-up and its login
SAMPLE_EVERY = 0.5  # seconds between RSS samples
PROGRESS_EVERY = 30.0
SETTLE_TIMEOUT = 15.0  # the bounded wait for connections and tasks to end after the traffic
EXIT_TIMEOUT = 15.0
DRIVE_SLACK = 300.0  # seconds the last transfers may take beyond the traffic's end
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=30)
# Growth is the end RSS minus the RSS after warm-up. A leak of a few hundred bytes per request
# passes it within minutes; the allocator's slack after the warm-up's peaks stays well below it.
RSS_GROWTH_BOUND = 24 * MiB
LOGIN_SLACK = 2  # the logins no chaos event or refresh explains: a start-up straggler, say

MESSAGE = {"to": "16315551234", "type": "text", "text": {"body": "soak"}}
CONTACTS = {"blocking": "wait", "contacts": ["+1 631 555 1234", "+1 631 555 9876", "nobody"]}
# Below, around and above the gateway's 1 MiB in-memory limit (above it: a spool file).
UPLOAD_SIZES = (64 * 1024, 900 * 1024, 3 * MiB // 2, 3 * MiB, 4 * MiB)
DOWNLOAD_SIZES = (256 * 1024, 2 * MiB)
SLOW_SIZE = 3 * MiB // 2  # slow senders spool to disk too
SLOW_CHUNK = 64 * 1024
FAST_CHUNK = 256 * 1024
SLOW_PAUSE = 0.02  # seconds between a slow client's pieces: about half a second per transfer
ABANDON_AFTER = 0.2  # seconds: a slow upload takes longer, so an abandoned one is always cut
REQUEST_ID = "X-Request-ID"


# --- judging answers -----------------------------------------------------------------------------


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


# --- the gateway process, observed ---------------------------------------------------------------


@dataclass(frozen=True)
class Descriptors:
    """A process's open file descriptors, by kind."""

    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        return ", ".join(f"{kind} {count}" for kind, count in sorted(self.kinds.items()))


@dataclass(frozen=True)
class Reading:
    """The gateway's descriptors, read from outside, and its metrics, scraped."""

    fds: Descriptors = field(default_factory=Descriptors)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> int | None:
        """asyncio tasks alive (the scrape's own included); None if the gateway has no gauge."""
        tasks = self.metrics.get("wa_gateway_asyncio_tasks")
        return None if tasks is None else int(tasks)

    def total(self, name: str, part: str = "") -> float:
        """The sum of metric ``name``'s samples whose labels contain ``part``."""
        return sum(
            value
            for key, value in self.metrics.items()
            if key.partition("{")[0] == name and part in key
        )


def _tcp_sockets(pid: int) -> dict[str, tuple[int, int, str]]:
    """``socket:[inode]`` -> (local port, remote port, state) for the TCP sockets pid can see."""
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(a.rpartition(":")[2], 16) for a in fields[1:3])
                sockets[f"socket:[{fields[9]}]"] = (local, remote, fields[3])
    return sockets


@dataclass
class Observer:
    """Reads a gateway process's descriptors and tasks, and closes idle Webapp connections."""

    gateway: GatewayProcess
    port: int
    sim: Simulator
    webapp: web.AppRunner
    webapp_port: int
    spool: Path

    def descriptors(self) -> Descriptors:
        """``/proc/<pid>/fd`` by kind: sockets by their ports, spool files, pipes and the rest."""
        pid = self.gateway.pid
        tcp = _tcp_sockets(pid)
        kinds: Counter[str] = Counter()
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:
                continue  # closed while we looked
            if target in tcp:
                local, remote, state = tcp[target]
                if state == "0A":
                    kinds["listening"] += 1
                elif remote == self.webapp_port:
                    kinds["Webapp connections"] += 1
                elif local == self.port:
                    kinds["client connections"] += 1
                else:
                    kinds["other TCP"] += 1
            elif target.startswith(str(self.spool)):
                kinds["spool files"] += 1
            else:
                kinds[target.partition(":")[0] if ":" in target else "files"] += 1
        return Descriptors(sum(kinds.values()), kinds)

    def close_idle_webapp_connections(self) -> None:
        """The Webapp hangs up its keep-alive connections, if it is handling no request.

        (Not ``Server.pre_shutdown()``: in aiohttp 3.14 that leaves an idle connection open but
        deaf, so the gateway's next request on it would hang until its timeout.)
        """
        server = self.webapp.server
        if server is not None and self.sim.in_flight == 0:
            for connection in server.connections:
                connection.force_close()

    async def settle(self, back_to: Reading | None = None) -> Reading:
        """Close the Webapp's idle connections, then wait (bounded) until the descriptor and task
        counts are back at ``back_to``'s; without it, until no connection is open and two
        readings in a row agree."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        previous: tuple[int, int | None] | None = None
        while True:
            self.close_idle_webapp_connections()
            await asyncio.sleep(0.2)
            reading = Reading(self.descriptors(), await scrape(self.gateway.url))
            counts = reading.fds.total, reading.tasks
            if back_to is None:
                kinds = reading.fds.kinds
                idle = not kinds["client connections"] + kinds["Webapp connections"]
                done, previous = idle and counts == previous, counts
            else:
                done = counts == (back_to.fds.total, back_to.tasks)
            if done or loop.time() > deadline:
                return reading


async def scrape(url: str) -> dict[str, float]:
    """The gateway's metric samples as ``name{label=value,...}`` -> value (``name`` alone when
    there are no labels). The scrape's own connection is closed after it."""
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        session.get(url + "/_gateway/metrics", headers=FRESH) as response,
    ):
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def log_problems(gateway: GatewayProcess) -> Counter[str]:
    """Warning and error events in the gateway's log, by level and name."""
    problems: Counter[str] = Counter()
    with gateway.stdout_path.open(errors="replace") as log:
        for line in log:
            if '"request.completed"' in line or not line.startswith("{"):
                continue  # access lines are info; reading them all would only be slow
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("level") in ("warning", "error", "critical"):
                    problems[f"{event['level']} {event.get('event')}"] += 1
    return problems


# --- the traffic ---------------------------------------------------------------------------------


class Corrupt(Exception):
    """A body that arrived other than it was sent."""


Body = io.BytesIO | AsyncIterator[bytes] | None  # a Content-Length, or chunked
Reader = Callable[[aiohttp.ClientResponse], Awaitable[object]]


class Traffic:
    """The clients' operations against one gateway, each recorded in a :class:`Ledger`."""

    def __init__(
        self, session: aiohttp.ClientSession, sim: Simulator, answers: WebappAnswers, seed: int
    ) -> None:
        self.session = session
        self.sim = sim
        self.answers = answers
        self.url = ""  # set once the gateway listens
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.bodies = {size: b"".join(synthetic_media_bytes(size)) for size in UPLOAD_SIZES}
        sizes = {*UPLOAD_SIZES, *DOWNLOAD_SIZES, SLOW_SIZE}
        self.digests = {size: synthetic_media_sha256(size) for size in sizes}
        self.operations: dict[Callable[[], Awaitable[None]], int] = {  # weights
            self.message: 40,
            self.contacts: 10,
            self.health: 10,
            self.client_login: 5,
            self.upload: 8,
            self.download: 8,
            self.slow_upload: 3,
            self.slow_download: 3,
            self.abandoned_upload: 1,
            self.abandoned_download: 1,
        }

    async def warm_up(self) -> None:
        """Every operation once, side by side."""
        await asyncio.gather(*(operation() for operation in self.operations))

    async def run(self, workers: int, until: float) -> None:
        """``workers`` clients doing weighted random operations until the loop time ``until``."""
        loop = asyncio.get_running_loop()
        operations, weights = list(self.operations), list(self.operations.values())

        async def worker() -> None:
            while loop.time() < until:
                await self.rng.choices(operations, weights)[0]()

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def exchange(
        self,
        kind: str,
        method: str,
        path: str,
        expected: int,
        read: Reader | None = None,
        *,
        replayable: bool = True,
        json_body: object = None,
        data: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> object:
        """One request, judged; what ``read`` made of an expected answer, or None."""
        rid = self.answers.open()
        outcome: int | str
        result: object = None
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=json_body,
                data=data,
                headers={REQUEST_ID: rid, **(headers or {})},
            ) as response:
                outcome = response.status
                if outcome == expected and read is not None:
                    result = await read(response)
                else:
                    await response.read()
        except Corrupt as exc:
            outcome = f"corrupt: {exc}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = f"client error: {type(exc).__name__}"
        finally:
            webapp = self.answers.close(rid)
        self.ledger.record(kind, expected, outcome, webapp, replayable=replayable)
        return result if outcome == expected else None

    async def message(self) -> None:
        await self.exchange("message", "POST", "/v1/messages", 201, json_body=MESSAGE)

    async def contacts(self) -> None:
        await self.exchange("contacts", "POST", "/v1/contacts", 200, json_body=CONTACTS)

    async def health(self) -> None:
        await self.exchange("health", "GET", "/v1/health", 200, replayable=False)

    async def client_login(self) -> None:
        basic = {"Authorization": aiohttp.encode_basic_auth("someone", "anything")}
        token = await self.exchange("login", "POST", "/v1/users/login", 200, _token, headers=basic)
        if isinstance(token, str):
            bearer = {"Authorization": f"Bearer {token}"}
            await self.exchange("logout", "POST", "/v1/users/logout", 200, headers=bearer)

    async def upload(self) -> None:
        size = self.rng.choice(UPLOAD_SIZES)
        await self._upload("upload", size, io.BytesIO(self.bodies[size]))

    async def slow_upload(self) -> None:
        await self._upload("slow upload", SLOW_SIZE, _trickle(SLOW_SIZE))

    async def abandoned_upload(self) -> None:
        try:
            async with asyncio.timeout(ABANDON_AFTER):
                await self._upload("abandoned upload", SLOW_SIZE, _trickle(SLOW_SIZE))
        except TimeoutError:
            self.ledger.abandoned += 1

    async def download(self) -> None:
        await self._download("download", self.rng.choice(DOWNLOAD_SIZES), slow=False)

    async def slow_download(self) -> None:
        await self._download("slow download", max(DOWNLOAD_SIZES), slow=True)

    async def abandoned_download(self) -> None:
        media_id = self.sim.add_media(max(DOWNLOAD_SIZES))

        async def read_a_little(response: aiohttp.ClientResponse) -> None:
            await response.content.read(SLOW_CHUNK)
            response.close()  # hang up with most of the answer still to come
            self.ledger.abandoned += 1

        await self.exchange(
            "abandoned download", "GET", f"/v1/media/{media_id}", 200, read_a_little
        )
        await self._delete(media_id)

    async def _upload(self, kind: str, size: int, body: Body) -> None:
        async def stored_intact(response: aiohttp.ClientResponse) -> object:
            media_id = (await response.json())["media"][0]["id"]
            if self.sim.media_digest(media_id) != (size, self.digests[size]):
                raise Corrupt("the Webapp stored another body")
            return media_id

        headers = {"Content-Type": "application/octet-stream"}
        media_id = await self.exchange(
            kind, "POST", "/v1/media", 201, stored_intact, data=body, headers=headers
        )
        if isinstance(media_id, str):
            await self._delete(media_id)

    async def _download(self, kind: str, size: int, *, slow: bool) -> None:
        media_id = self.sim.add_media(size)

        async def arrived_intact(response: aiohttp.ClientResponse) -> None:
            got = await _digest(response, slow=slow)
            if got != (size, self.digests[size]):
                raise Corrupt(f"{got[0]} bytes arrived, sha256 {got[1][:12]}...")

        await self.exchange(kind, "GET", f"/v1/media/{media_id}", 200, arrived_intact)
        await self._delete(media_id)

    async def _delete(self, media_id: str) -> None:
        await self.exchange("delete media", "DELETE", f"/v1/media/{media_id}", 200)


async def _token(response: aiohttp.ClientResponse) -> object:
    return (await response.json())["users"][0]["token"]


async def _digest(response: aiohttp.ClientResponse, *, slow: bool) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := await response.content.read(SLOW_CHUNK if slow else FAST_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if slow:
            await asyncio.sleep(SLOW_PAUSE)
    return size, digest.hexdigest()


async def _trickle(size: int) -> AsyncIterator[bytes]:
    """A slow sender: synthetic media in small pieces, with pauses."""
    data = b"".join(synthetic_media_bytes(size))
    for offset in range(0, size, SLOW_CHUNK):
        await asyncio.sleep(SLOW_PAUSE)
        yield data[offset : offset + SLOW_CHUNK]


# --- the chaos -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    """Rotates the Webapp password the way an operator does: ``python -m gateway rotate-password``
    with the gateway's own settings. An asyncio subprocess, since this process's event loop
    serves the Webapp the command logs in at."""

    settings: Mapping[str, str]  # the gateway's
    sim: Simulator
    stderr_path: Path  # the last run's

    @property
    def password_file(self) -> PasswordFile:
        return PasswordFile(Path(self.settings["WA_PASSWORD_FILE"]))

    def file_is_current(self) -> bool:
        """Whether the password file holds the Webapp's password now."""
        try:
            return self.password_file.read().reveal() == self.sim.password
        except Invalid:
            return False

    def next_left(self) -> bool:
        """Whether a new password still waits in ``<file>.next``."""
        return os.path.lexists(self.password_file.next_path)

    async def rotate_password(self) -> str | None:
        """Run the command once (killed after ``ROTATE_TIMEOUT``); None if it exited 0 with the
        Webapp's password in the file and nothing in ``<file>.next``, else what went wrong."""
        with self.stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "rotate-password",
                env=child_env(self.settings),
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            async with asyncio.timeout(ROTATE_TIMEOUT):
                status = await process.wait()
        except TimeoutError:
            return f"rotate-password still ran after {ROTATE_TIMEOUT:g} s"
        finally:
            if process.returncode is None:  # timed out, or the soak was cancelled
                process.kill()
                async with asyncio.timeout(EXIT_TIMEOUT):
                    await process.wait()
        if status != 0:
            said = self.stderr_path.read_text(errors="replace").strip().splitlines()
            return f"rotate-password exited {status}: {said[-1] if said else 'nothing said'}"
        if not self.file_is_current():
            return "rotate-password exited 0, but the file does not hold the Webapp's password"
        if self.next_left():
            return f"rotate-password exited 0, but left {self.password_file.next_path.name}"
        return None


@dataclass
class Chaos:
    """Revocations, expiries and password rotations done while traffic flowed."""

    revocations: int = 0
    expiries: int = 0
    rotations: int = 0  # rotate-password runs that succeeded
    rotation_failures: list[str] = field(default_factory=list)  # what went wrong, one per run
    # Rotations whose password change at the Webapp revoked the user's earlier tokens, the
    # gateway's pooled one included (``Simulator.password_change_revokes``).
    revoking_rotations: int = 0
    slowest_rotation: float = 0.0  # seconds one rotate-password run took, start-up included

    @property
    def events(self) -> int:
        """What took the gateway's token away, each one calling for a login."""
        return self.revocations + self.expiries + self.revoking_rotations

    @property
    def rotations_tried(self) -> int:
        return self.rotations + len(self.rotation_failures)


async def rotate(operator: Operator, done: Chaos) -> None:
    """One rotation, by the operator; the Webapp's password changes alternately revoke the
    user's tokens and leave them valid."""
    sim = operator.sim
    sim.password_change_revokes = done.rotations_tried % 2 == 0
    changes = sim.password_changes
    began = asyncio.get_running_loop().time()
    problem = await operator.rotate_password()
    took = asyncio.get_running_loop().time() - began
    done.slowest_rotation = max(done.slowest_rotation, took)
    # Counted by what the Webapp did: a failed run may have changed the password all the same.
    if sim.password_changes > changes and sim.password_change_revokes:
        done.revoking_rotations += 1
    if problem is None:
        done.rotations += 1
    else:
        done.rotation_failures.append(problem)


async def chaos(operator: Operator, rng: random.Random, started: float, until: float) -> Chaos:
    """Revoke or expire every token every few seconds, except in each cycle's calm phase; the
    first of these events ``ROTATE_EVERY`` seconds or more after the last rotation began (and
    the first of each cycle's chaos) is a password rotation instead."""
    loop = asyncio.get_running_loop()
    sim = operator.sim
    done = Chaos()
    rotate_at = started + CHAOS_CALM
    while True:
        phase = (loop.time() - started) % CHAOS_CYCLE
        calm = phase < CHAOS_CALM
        pause = CHAOS_CALM - phase if calm else rng.uniform(*CHAOS_GAP)
        if loop.time() + pause >= until:
            return done
        await asyncio.sleep(pause)
        if calm:
            continue
        if loop.time() >= rotate_at:
            rotate_at = loop.time() + ROTATE_EVERY
            await rotate(operator, done)
        elif rng.random() < 0.5:
            sim.revoke_all()
            done.revocations += 1
        else:
            sim.expire_all()
            done.expiries += 1


# --- the report ----------------------------------------------------------------------------------


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
                f"flat memory: RSS grew {_mib(self.rss_growth)} after warm-up "
                f"(bound {_mib(RSS_GROWTH_BOUND)})",
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
        rate = ledger.served / max(self.elapsed, 1.0)
        statuses = "  ".join(f"{s}: {n:,}" for s, n in sorted(ledger.statuses.items()))
        warnings = ", ".join(f"{k} x{n}" for k, n in sorted(self.log_problems.items()))
        rows = [
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
                f"{_mib(self.rss_start)} / {_mib(self.rss_warm)} / {_mib(self.rss_end)}",
            ),
            (
                "RSS peak",
                f"{_mib(self.rss_peak)} (VmHWM; highest sample "
                f"{_mib(max(self.rss_samples, default=0))})",
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
        width = max(len(name) for name, _ in rows)
        lines = ["wa-gateway soak", *(f"  {name:<{width}}  {value}" for name, value in rows)]
        lines.append("expectations")
        lines += [f"  {'PASS' if held else 'FAIL'}  {what}" for held, what in self.checks()]
        lines += [f"  unexplained: {sample}" for sample in ledger.samples]
        lines += [f"  rotation failed: {problem}" for problem in self.chaos.rotation_failures[:20]]
        return "\n".join(lines)


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


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


# --- the run -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_webapp(app: web.Application) -> AsyncIterator[web.AppRunner]:
    """The simulated Webapp on a free 127.0.0.1 port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner
    finally:
        await runner.cleanup()


def write_password_file(directory: Path, password: str) -> Path:
    """``password`` in a file of its own (0600) in ``directory`` (0700), made if need be."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "wa-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def soak_rig(
    workdir: Path, sim: Simulator, answers: WebappAnswers
) -> AsyncIterator[tuple[Observer, Operator]]:
    """The simulator in this process and a gateway process before it, which reads its password
    from a file; and an operator who rotates that password."""
    app = sim.make_app()
    app.on_response_prepare.append(answers.on_response_prepare)
    spool = workdir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    password_file = write_password_file(workdir / "secrets", sim.password)
    async with serve_webapp(app) as webapp:
        webapp_port = webapp.addresses[0][1]
        port = free_port()
        settings = gateway_env(
            f"http://127.0.0.1:{webapp_port}",
            port,
            GATEWAY_SPOOL_DIR=str(spool),
            WA_PASSWORD_FILE=str(password_file),
        )
        del settings["WA_PASSWORD"]  # the file alone holds it, as rotation needs
        url = f"http://127.0.0.1:{port}"
        async with running_gateway(["serve"], settings, url, workdir) as gateway:
            observer = Observer(gateway, port, sim, webapp, webapp_port, spool)
            yield observer, Operator(settings, sim, workdir / "rotate-password.stderr")


async def drive(
    traffic: Traffic,
    observer: Observer,
    operator: Operator,
    report: SoakReport,
    progress: Callable[[str], None] | None,
) -> None:
    """Warm up, then traffic and chaos for ``report.seconds``, sampling memory as it goes."""
    loop = asyncio.get_running_loop()
    gateway, sim = observer.gateway, traffic.sim
    started = loop.time()
    until = started + report.seconds
    warm_until = started + min(max(5.0, report.seconds / 10), 60.0)

    async def sample() -> None:
        next_progress = started + PROGRESS_EVERY
        while loop.time() < until:
            await asyncio.sleep(SAMPLE_EVERY)
            report.rss_samples.append(gateway.memory().rss)
            sim.seen.clear()  # the simulator's record of every request is not needed here
            if progress is not None and loop.time() >= next_progress:
                next_progress += PROGRESS_EVERY
                progress(
                    f"{loop.time() - started:6.0f} s  served {traffic.ledger.served:,}  "
                    f"unexplained {traffic.ledger.unexplained}  RSS "
                    f"{_mib(report.rss_samples[-1])}  fds {observer.descriptors().total}"
                )

    logins_before, changes_before = sim.logins, sim.password_changes
    async with asyncio.TaskGroup() as group:
        chaos_rng = random.Random(report.seed + 1)
        chaos_done = group.create_task(chaos(operator, chaos_rng, started, until))
        group.create_task(sample())
        async with asyncio.timeout(report.seconds + DRIVE_SLACK):
            await traffic.warm_up()
            await traffic.run(report.concurrency, warm_until)
            report.rss_warm = gateway.memory().rss
            await traffic.run(report.concurrency, until)
    report.elapsed = loop.time() - started
    # Each password change is a login of rotate-password's, which the Webapp counts with the
    # gateway's: the gateway itself never changes the password here (no schedule, and no
    # "password change required").
    rotations = sim.password_changes - changes_before
    report.logins = sim.logins - logins_before - rotations
    report.chaos = chaos_done.result()


async def run_soak(
    seconds: float,
    workdir: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Soak a gateway process for ``seconds`` of traffic; what it measured."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be more than 0 and at most {MAX_SECONDS:.0f}")
    report = SoakReport(seconds, concurrency, random.randrange(2**32) if seed is None else seed)
    sim = Simulator(
        password=PASSWORD,
        password_change_required=False,
        api_key=API_KEY,
        token_lifetime=TOKEN_LIFETIME,
    )
    answers = WebappAnswers()
    async with soak_rig(workdir, sim, answers) as (observer, operator):
        gateway = observer.gateway
        report.start = await observer.settle()
        report.rss_start = gateway.memory().rss
        connector = aiohttp.TCPConnector(limit=2 * concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
            traffic = Traffic(session, sim, answers, report.seed)
            traffic.url = gateway.url
            await drive(traffic, observer, operator, report, progress)
        report.ledger = traffic.ledger
        report.end = await observer.settle(report.start)
        report.spool_entries = len(list(observer.spool.iterdir()))
        memory = gateway.memory()
        report.rss_end, report.rss_peak = memory.rss, memory.peak
        gateway.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            report.exit_status = await gateway.wait(EXIT_TIMEOUT)
        report.log_problems = log_problems(gateway)
        report.password_changes = sim.password_changes
        report.password_file_current = operator.file_is_current()
        report.password_next_left = operator.next_left()
    return report


# --- the command ---------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= MAX_SECONDS:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_SECONDS:.0f}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description=(
            "Soak a wa-gateway process with mixed traffic, token revocations and expiries, and "
            "password rotations."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=_seconds,
        default=DEFAULT_SECONDS,
        help=f"seconds of traffic (default {DEFAULT_SECONDS:.0f}, at most {MAX_SECONDS:.0f})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        choices=range(1, 257),
        metavar="N",
        help=f"client workers, 1 to 256 (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--seed", type=int, help="seed of the traffic mix and the chaos")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the report; 0 if every expectation held, else 1."""
    args = _parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="wa-gateway-soak-"))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(f"soak: {args.seconds:.0f} s of traffic, {args.concurrency} workers, work dir {workdir}")
    report = asyncio.run(
        run_soak(args.seconds, workdir, concurrency=args.concurrency, seed=args.seed, progress=say)
    )
    print(report.render())
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"The gateway's output is kept in {workdir}.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
