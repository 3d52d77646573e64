"""Password rotation: new passwords, the crash-safe order of a rotating login, the schedule, the
``rotate-password`` command, and a gateway that keeps serving while its password changes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from pytest_aiohttp import AiohttpServer

from gateway.attempts import LoginFn
from gateway.bearer import Account
from gateway.config import ConfigError, load_config
from gateway.login import (
    BadCredentials,
    Grant,
    InvalidLoginAnswer,
    LoginFailed,
    LoginRefused,
    PasswordChangeRequired,
    WebappUnavailable,
)
from gateway.metrics import Metrics
from gateway.passwords import CHARACTER_CLASSES, PasswordFile, new_password
from gateway.rotation import SETTLE_AFTER, Rotator, log_in
from gateway.secret import Secret
from gateway.sim.answers import password_problem
from gateway.simulator import LoginFault, Simulator
from gateway.threads import on_disk
from gateway.tokens import TokenPool

from .conftest import (
    API_KEY,
    MESSAGE,
    TEST_ENV,
    Logs,
    MakeRig,
    Rig,
    Scrape,
    open_files,
    until,
)
from .processes import child_env

OLD = "Old-password-1!"
REPO = Path(__file__).resolve().parent.parent


# --- new passwords --------------------------------------------------------------------------------


def test_new_passwords_meet_the_webapps_rules_and_differ() -> None:
    rng = random.Random(7)
    passwords = [new_password(rng).reveal() for _ in range(2000)]
    for password in passwords:
        # The simulator's own reading of the Webapp's rules, written apart from the generator.
        assert password_problem(password, "new_password") is None, password
        assert len(password) == 32
        assert all(any(c in group for c in password) for group in CHARACTER_CLASSES)
    assert len(set(passwords)) == len(passwords)


# --- the order of a rotating login, against a Webapp kept in memory -------------------------------


class FakeWebapp:
    """The Webapp's side of a login, without sockets: one password, changed by ``new_password``.

    ``lose_next`` applies the next login and then loses its answer, as a cut connection would.
    """

    def __init__(self, password: str, *, change_required: bool = False) -> None:
        self.password = password
        self.change_required = change_required
        self.attempts: list[tuple[str, str | None]] = []
        self.changes = 0
        self.lose_next = False
        self.delay = 0.0

    async def post_account(self, _account: Account) -> Grant:
        return await self.post(Secret(self.password), None)

    async def post(self, password: Secret, new: Secret | None) -> Grant:
        self.attempts.append((password.reveal(), None if new is None else new.reveal()))
        await asyncio.sleep(self.delay)
        if password.reveal() != self.password:
            raise BadCredentials("401")
        if new is None and self.change_required:
            raise PasswordChangeRequired("1024")
        if new is not None:
            self.password, self.change_required = new.reveal(), False
            self.changes += 1
        if self.lose_next:
            self.lose_next = False
            raise WebappUnavailable("cut")
        return Grant(Secret(f"token-{len(self.attempts)}"), 3600.0)


@dataclass(frozen=True)
class StuckFile(PasswordFile):
    """A password file whose rename fails, as on a file bind-mounted by itself (EBUSY)."""

    def commit(self, password: Secret) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")


@dataclass(frozen=True)
class FullDisk(PasswordFile):
    """A password file on a full disk: a new password cannot be written beside it."""

    def write_next(self, password: Secret) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def file(tmp_path: Path) -> PasswordFile:
    path = tmp_path / "password"
    path.write_text(OLD + "\n")
    path.chmod(0o600)
    return PasswordFile(path)


async def login(
    file: PasswordFile, webapp: FakeWebapp, *, rotate: bool = False, when_required: bool = True
) -> Grant:
    return await log_in(
        file, webapp.post, rotate=rotate, rotate_if_required=when_required, lock_wait=1.0
    )


async def test_a_plain_login_reads_the_file_and_changes_nothing(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD)
    await login(file, webapp)
    assert webapp.attempts == [(OLD, None)]
    assert file.read().reveal() == OLD
    assert not file.next_path.exists()


async def test_a_rotation_keeps_the_new_password_only_in_the_file(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD)
    await login(file, webapp, rotate=True)
    assert webapp.changes == 1
    assert webapp.password != OLD
    assert file.read().reveal() == webapp.password
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert not file.next_path.exists()


async def test_a_rotation_whose_answer_is_lost_is_finished_by_the_next_login(
    file: PasswordFile,
) -> None:
    webapp = FakeWebapp(OLD)
    webapp.lose_next = True
    with pytest.raises(WebappUnavailable):
        await login(file, webapp, rotate=True)
    # The Webapp took the new password; the file still has the old one, the new one waits beside.
    assert file.read().reveal() == OLD
    assert file.next_path.read_text().rstrip("\n") == webapp.password
    await login(file, webapp)
    assert file.read().reveal() == webapp.password
    assert not file.next_path.exists()
    assert webapp.attempts[-1] == (webapp.password, None)  # the waiting password, tried first


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_a_refused_new_password_is_kept_while_a_late_answer_may_still_come(
    file: PasswordFile,
) -> None:
    webapp = FakeWebapp(OLD)
    file.write_next(Secret("Not-yet-applied-2@"))
    await login(file, webapp)
    assert webapp.attempts == [("Not-yet-applied-2@", None), (OLD, None)]
    assert file.next_path.exists()  # a slow Webapp may still act on it
    webapp.password = "Not-yet-applied-2@"  # ... as it does now
    await login(file, webapp)
    assert file.read().reveal() == "Not-yet-applied-2@"
    assert not file.next_path.exists()


async def test_a_refused_new_password_is_dropped_once_settled_and_the_old_one_works(
    file: PasswordFile,
) -> None:
    webapp = FakeWebapp(OLD)
    file.write_next(Secret("Never-applied-2@"))
    age(file.next_path, SETTLE_AFTER + 1)
    await login(file, webapp)
    assert webapp.attempts == [("Never-applied-2@", None), (OLD, None)]
    assert file.read().reveal() == OLD
    assert not file.next_path.exists()


async def test_no_rotation_starts_while_an_earlier_ones_outcome_is_unknown(
    file: PasswordFile,
) -> None:
    webapp = FakeWebapp(OLD)
    file.write_next(Secret("Maybe-applied-2@"))
    with pytest.raises(LoginFailed, match="not known yet"):
        await login(file, webapp, rotate=True)
    assert file.next_path.read_text() == "Maybe-applied-2@\n"  # not overwritten
    assert webapp.changes == 0
    age(file.next_path, SETTLE_AFTER + 1)
    await login(file, webapp, rotate=True)
    assert webapp.changes == 1
    assert file.read().reveal() == webapp.password


@pytest.mark.parametrize(
    ("failure", "kept"),
    [
        (BadCredentials("401"), False),
        (LoginRefused("400: against the password rules"), False),
        (WebappUnavailable("503"), True),
        (WebappUnavailable("the answer was lost"), True),
        (InvalidLoginAnswer("200 without a token"), True),
    ],
    ids=["401", "400", "503", "lost", "unreadable-200"],
)
async def test_a_failed_rotation_keeps_its_new_password_unless_the_webapp_said_no(
    file: PasswordFile, failure: LoginFailed, kept: bool
) -> None:
    async def post(_password: Secret, _new: Secret | None) -> Grant:
        raise failure

    with pytest.raises(type(failure)):
        await log_in(file, post, rotate=True, rotate_if_required=True, lock_wait=1.0)
    assert file.next_path.exists() == kept
    assert file.read().reveal() == OLD


async def test_a_rotation_settles_an_unfinished_one_before_it_writes_its_own(
    file: PasswordFile,
) -> None:
    webapp = FakeWebapp("Applied-earlier-3#")
    file.write_next(Secret("Applied-earlier-3#"))  # a crash after the Webapp took this one
    await login(file, webapp, rotate=True)
    assert webapp.changes == 1
    assert webapp.attempts[0] == ("Applied-earlier-3#", None)
    assert webapp.attempts[1][0] == "Applied-earlier-3#"  # the rotation starts from it
    assert file.read().reveal() == webapp.password
    assert not file.next_path.exists()


async def test_a_rotation_refused_with_401_changes_nothing(file: PasswordFile) -> None:
    webapp = FakeWebapp("Someone-else-4$")
    with pytest.raises(BadCredentials):
        await login(file, webapp, rotate=True)
    assert webapp.password == "Someone-else-4$"
    assert file.read().reveal() == OLD
    assert not file.next_path.exists()


async def test_a_required_change_is_made_only_when_rotation_is_on(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD, change_required=True)
    with pytest.raises(PasswordChangeRequired):
        await login(file, webapp, when_required=False)
    assert file.read().reveal() == OLD
    assert webapp.changes == 0
    await login(file, webapp, when_required=True)
    assert webapp.changes == 1
    assert file.read().reveal() == webapp.password != OLD


async def test_concurrent_rotations_through_separate_handles_take_turns(
    file: PasswordFile,
) -> None:
    # Separate PasswordFile objects stand for separate processes: each opens its own lock.
    webapp = FakeWebapp(OLD)
    webapp.delay = 0.02  # without the lock, every rotation but one would read a stale password
    await asyncio.gather(*(login(PasswordFile(file.path), webapp, rotate=True) for _ in range(5)))
    assert webapp.changes == 5
    assert file.read().reveal() == webapp.password
    assert not file.next_path.exists()


async def test_a_login_gives_up_on_a_lock_held_elsewhere(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD)
    fd = os.open(file.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LoginFailed, match="lock"):
            await log_in(file, webapp.post, rotate=True, rotate_if_required=True, lock_wait=0.1)
    finally:
        os.close(fd)
    assert webapp.attempts == []
    await login(file, webapp)  # released: logins go on
    assert webapp.attempts == [(OLD, None)]


async def test_a_lock_file_that_cannot_be_used_fails_the_login_where_rotations_can_happen(
    file: PasswordFile,
) -> None:
    # An unguarded login could interleave with a rotation: better no login than a lost password.
    file.lock_path.symlink_to(file.path)
    webapp = FakeWebapp(OLD)
    with pytest.raises(LoginFailed, match="lock is unavailable"):
        await login(file, webapp)
    assert webapp.attempts == []


async def test_a_new_password_that_cannot_be_written_is_never_sent(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD)
    with pytest.raises(LoginFailed, match="nothing was sent"):
        await login(FullDisk(file.path), webapp, rotate=True)
    assert webapp.attempts == []
    assert file.read().reveal() == OLD


async def test_an_unreadable_new_password_is_neither_used_nor_overwritten(
    file: PasswordFile,
) -> None:
    file.next_path.mkdir()
    webapp = FakeWebapp(OLD)
    for rotate in (False, True):
        with pytest.raises(LoginFailed, match="may hold the Webapp's password"):
            await login(file, webapp, rotate=rotate)
    assert webapp.attempts == []
    assert file.next_path.is_dir()


async def test_an_accepted_password_that_cannot_be_renamed_is_still_used(
    file: PasswordFile, logs: Logs
) -> None:
    stuck = StuckFile(file.path)
    webapp = FakeWebapp(OLD)
    grant = await login(stuck, webapp, rotate=True)  # the Webapp took it: the login succeeded
    assert grant.token.reveal().startswith("token-")
    assert file.next_path.read_text().rstrip("\n") == webapp.password
    assert logs.named("password.commit_failed")
    await login(stuck, webapp)  # it is tried first from now on, and works
    assert webapp.attempts[-1] == (webapp.password, None)
    await login(file, webapp)  # once the rename works, it is finished
    assert file.read().reveal() == webapp.password
    assert not file.next_path.exists()


async def test_a_new_password_takes_the_owner_and_group_mode_of_the_file(
    file: PasswordFile,
) -> None:
    file.path.chmod(0o644)  # the world's read bit is not carried over
    await login(file, FakeWebapp(OLD), rotate=True)
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o640
    assert file.path.stat().st_uid == os.getuid()


async def test_a_step_on_disk_finishes_even_when_its_login_is_cancelled() -> None:
    finished = threading.Event()

    def slow_step() -> None:
        time.sleep(0.2)
        finished.set()

    task = asyncio.ensure_future(on_disk(slow_step))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()  # the caller heard of the cancellation only after the step ended


async def test_a_step_on_disk_outlasts_a_second_cancellation_too() -> None:
    finished = threading.Event()

    def slow_step() -> None:
        time.sleep(0.2)
        finished.set()

    task = asyncio.ensure_future(on_disk(slow_step))
    for _ in range(3):  # a login timeout, then the pool closing, then Ctrl-C
        await asyncio.sleep(0.03)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_a_rotation_that_gives_up_restarts_the_settling_time(file: PasswordFile) -> None:
    webapp = FakeWebapp(OLD)
    webapp.delay = 1.0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await login(file, webapp, rotate=True)
    # Written long ago, as far as its clock goes, had the login taken that long ...
    assert file.next_age() < 5  # ... but the give-up counts: it is kept for SETTLE_AFTER more
    webapp.delay = 0
    await login(file, webapp)
    assert file.next_path.exists()


async def test_a_rename_checks_the_waiting_password_is_still_the_one_accepted(
    file: PasswordFile,
) -> None:
    file.write_next(Secret("Accepted-one-3#"))
    file.write_next(Secret("Written-later-4$"))  # by a writer the lock does not reach
    with pytest.raises(FileNotFoundError):
        file.commit(Secret("Accepted-one-3#"))
    assert file.read().reveal() == OLD


async def test_a_lock_file_made_under_a_tight_umask_opens_for_its_owner_and_group(
    file: PasswordFile,
) -> None:
    previous = os.umask(0o077)
    try:
        async with file.locked(1.0):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE(file.lock_path.stat().st_mode) == 0o660


def nfs_flock(fd: int, operation: int) -> None:
    """flock as the Linux NFS client carries it out: a whole-file byte-range lock, which refuses
    an exclusive lock on a descriptor open for reading only (EBADF)."""
    fcntl.lockf(fd, operation)


async def test_the_lock_works_where_flock_is_a_byte_range_lock_as_on_nfs(
    file: PasswordFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    webapp = FakeWebapp(OLD)
    await login(file, webapp, rotate=True)
    assert webapp.changes == 1
    assert file.read().reveal() == webapp.password != OLD


async def test_a_lock_the_file_system_cannot_give_fails_the_login_by_name(
    file: PasswordFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a crash: a login failure that says which file and why (NFSv3 without a lock
    manager answers ENOLCK)."""

    def no_locks(_fd: int, _operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    webapp = FakeWebapp(OLD)
    with pytest.raises(LoginFailed) as failed:
        await login(file, webapp)
    assert str(file.lock_path) in failed.value.details
    assert "cannot be locked (No locks available)" in failed.value.details
    assert webapp.attempts == []


class SlowLockFile(PasswordFile):
    """A lock file on a file server that takes its time to open it."""

    def _open_lock(self) -> int | None:
        time.sleep(0.2)
        return super()._open_lock()


async def test_a_login_cancelled_while_the_lock_file_opens_leaves_no_descriptor(
    file: PasswordFile, tmp_path: Path
) -> None:
    task = asyncio.ensure_future(login(SlowLockFile(file.path), FakeWebapp(OLD)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_files(tmp_path) == 0  # the descriptor opened after the cancellation is closed
    assert file.lock_path.exists()


@contextlib.asynccontextmanager
async def overdue_schedule(
    file: PasswordFile, login_fn: LoginFn, rotate_fn: LoginFn | None
) -> AsyncIterator[Metrics]:
    """A rotation schedule over ``file``, made two hours old so that a rotation is due at once,
    running until the end of the block; its metrics."""
    past = time.time() - 7200
    os.utime(file.path, (past, past))
    config = load_config(None, {**TEST_ENV, "WA_WEBAPP_URL": "http://127.0.0.1:9"})
    metrics = Metrics()
    pool = TokenPool(login_fn, config.tokens, metrics, rotate_fn=rotate_fn)
    account = Account("http://127.0.0.1:9", "admin")
    rotator = Rotator(pool, account, file, 3600, config.tokens, metrics)
    rotator.start()
    try:
        yield metrics
    finally:
        await rotator.close()
        await pool.close()


async def test_the_schedule_survives_a_rotation_that_crashes(
    file: PasswordFile, logs: Logs
) -> None:
    webapp = FakeWebapp(OLD)
    async with overdue_schedule(file, webapp.post_account, None) as metrics:  # no rotate_fn: a bug
        await until(lambda: len(logs.named("password.rotation_crashed")) >= 2)
    assert metrics.rotations.labels("error")._value.get() >= 2


class FailingDisk(PasswordFile):
    """A password file on a disk that fails (EIO) once the new password is in use."""

    def not_kept(self) -> bool:
        raise OSError(errno.EIO, "Input/output error")


async def test_the_schedule_survives_a_disk_error_after_a_rotation(
    file: PasswordFile, logs: Logs
) -> None:
    webapp = FakeWebapp(OLD)
    failing = FailingDisk(file.path)
    async with overdue_schedule(failing, webapp.post_account, webapp.post_account) as metrics:
        await until(lambda: len(logs.named("password.rotation_crashed")) >= 2)
    assert metrics.rotations.labels("error")._value.get() >= 2


async def test_a_rotation_whose_password_could_not_replace_the_file_is_not_counted_ok(
    file: PasswordFile, logs: Logs
) -> None:
    """The Webapp took the new password, but the rename fails every time (EBUSY): the schedule
    counts not_kept and backs off, rather than count ok and never rotate again unnoticed."""
    stuck = StuckFile(file.path)
    webapp = FakeWebapp(OLD)

    async def rotate(_account: Account) -> Grant:
        return await log_in(stuck, webapp.post, rotate=True, rotate_if_required=True, lock_wait=1.0)

    async with overdue_schedule(stuck, webapp.post_account, rotate) as metrics:
        await until(lambda: logs.named("password.rotation_failed"))
    assert webapp.changes == 1  # rotated once at the Webapp, and no more
    assert stuck.read_next().reveal() == webapp.password  # type: ignore[union-attr]
    assert metrics.rotations.labels("not_kept")._value.get() == 1
    assert metrics.rotations.labels("ok")._value.get() == 0
    assert logs.named("password.rotation_failed")[0]["kind"] == "not_kept"
    assert logs.named("password.rotation_failed")[0]["level"] == "warning"


# --- the setting ----------------------------------------------------------------------------------


def config_env(tmp_path: Path, **env: str) -> dict[str, str]:
    path = tmp_path / "password"
    path.write_text(OLD)
    path.chmod(0o600)
    return {"WA_WEBAPP_URL": "http://127.0.0.1:9", "WA_PASSWORD_FILE": str(path), **env}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30d", 30 * 86400.0), ("12h", 43200.0), ("90m", 5400.0), ("3600", 3600.0), ("0", 0.0)],
)
def test_the_rotation_interval_takes_units(tmp_path: Path, raw: str, seconds: float) -> None:
    config = load_config(None, config_env(tmp_path, WA_PASSWORD_ROTATE_EVERY=raw))
    assert config.webapp.password_rotate_every == seconds


@pytest.mark.parametrize("raw", ["59", "30x", "-1d", "soon", "1e999"])
def test_a_bad_rotation_interval_is_named(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, config_env(tmp_path, WA_PASSWORD_ROTATE_EVERY=raw))
    assert caught.value.problems[0].startswith("WA_PASSWORD_ROTATE_EVERY")


def test_rotation_needs_a_password_file(tmp_path: Path) -> None:
    env = config_env(tmp_path, WA_PASSWORD_ROTATE_EVERY="30d", WA_PASSWORD=OLD)
    del env["WA_PASSWORD_FILE"]
    with pytest.raises(ConfigError) as caught:
        load_config(None, env)
    assert caught.value.problems == [
        "WA_PASSWORD_ROTATE_EVERY (webapp.password_rotate_every): needs WA_PASSWORD_FILE, "
        "where the gateway keeps each new password"
    ]


def test_a_login_timeout_beyond_what_rotation_can_settle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, config_env(tmp_path, GATEWAY_LOGIN_TIMEOUT="301"))
    assert caught.value.problems == [
        "GATEWAY_LOGIN_TIMEOUT (tokens.login_timeout): must be at most 300 seconds"
    ]


def test_rotation_refuses_a_password_file_that_is_a_symlink(tmp_path: Path) -> None:
    env = config_env(tmp_path, WA_PASSWORD_ROTATE_EVERY="30d")
    link = tmp_path / "link"
    link.symlink_to(env["WA_PASSWORD_FILE"])
    with pytest.raises(ConfigError) as caught:
        load_config(None, {**env, "WA_PASSWORD_FILE": str(link)})
    assert caught.value.problems == [
        f"WA_PASSWORD_ROTATE_EVERY (webapp.password_rotate_every): {link} is a symlink, which "
        "a new password would replace"
    ]


# --- a gateway whose password rotates -------------------------------------------------------------


@pytest.fixture
def password_path(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "password"
    path.parent.mkdir()
    path.write_text(OLD + "\n")
    path.chmod(0o600)
    return path


async def rotating_rig(
    make_rig: MakeRig,
    path: Path,
    every: str = "30d",
    sim: Simulator | None = None,
    **sim_options: object,
) -> Rig:
    env: dict[str, str | None] = {
        "WA_PASSWORD": None,
        "WA_PASSWORD_FILE": str(path),
        "WA_PASSWORD_ROTATE_EVERY": every,
    }
    if sim is not None:
        return await make_rig(sim=sim, env=env)
    return await make_rig(env=env, **{"password": OLD, **sim_options})


async def send_messages(rig: Rig, count: int) -> list[int]:
    async def one() -> int:
        async with rig.client.post("/v1/messages", json=MESSAGE) as response:
            await response.read()
            return response.status

    return await asyncio.gather(*(one() for _ in range(count)))


def stored(path: Path) -> str:
    """The password a file holds (blocking, but a few bytes: not worth a thread in a test)."""
    return path.read_text().rstrip("\n")


def assert_no_password_leaked(rig: Rig, *passwords: str) -> None:
    for password in passwords:
        assert password not in rig.logs.text


async def test_a_new_webapp_that_requires_a_change_gets_one_from_the_gateway(
    make_rig: MakeRig, password_path: Path
) -> None:
    rig = await rotating_rig(make_rig, password_path, password_change_required=True)
    assert await send_messages(rig, 20) == [201] * 20
    new = stored(password_path)
    assert rig.sim.password == new != OLD
    assert rig.sim.password_changes == 1
    assert rig.sim.login_attempts == 2  # refused with code 1024, then the rotating login
    assert rig.logs.named("password.rotated")
    assert_no_password_leaked(rig, OLD, new)


async def test_a_rotation_that_worked_is_logged_at_info(
    make_rig: MakeRig, password_path: Path
) -> None:
    """A success, not something to look into (its failures are warnings)."""
    rig = await rotating_rig(make_rig, password_path, password_change_required=True)
    assert await send_messages(rig, 1) == [201]
    assert [e["level"] for e in rig.logs.named("password.rotated")] == ["info"]


async def test_without_rotation_a_required_change_says_how_to_make_one(
    make_rig: MakeRig, password_path: Path
) -> None:
    rig = await rotating_rig(make_rig, password_path, "0", password_change_required=True)
    async with rig.client.post("/v1/messages", json=MESSAGE) as response:
        assert response.status == 503
        details = (await response.json())["errors"][0]["details"]
    assert "rotate-password" in details
    assert rig.sim.password == OLD
    assert rig.sim.password_changes == 0
    assert stored(password_path) == OLD


async def test_the_schedule_rotates_a_password_file_older_than_the_interval(
    make_rig: MakeRig, password_path: Path
) -> None:
    past = time.time() - 2 * 3600
    os.utime(password_path, (past, past))
    rig = await rotating_rig(make_rig, password_path, "1h")
    await until(lambda: rig.sim.password_changes == 1)
    await until(lambda: stored(password_path) == rig.sim.password)
    assert await send_messages(rig, 5) == [201] * 5
    registry = rig.gateway.metrics.registry
    await until(
        lambda: registry.get_sample_value("wa_gateway_password_rotations_total", {"result": "ok"})
    )
    async with rig.client.get("/_gateway/metrics") as response:
        scraped = Scrape(await response.text(), response.content_type)
    assert scraped("wa_gateway_password_rotations_total", result="ok") == 1
    assert scraped.samples[("wa_gateway_password_age_seconds", ())] < 3600
    assert rig.sim.password_changes == 1  # fresh again: no second rotation
    assert_no_password_leaked(rig, OLD, rig.sim.password)


async def test_a_scheduled_rotation_the_webapp_refuses_is_tried_again_after_a_backoff(
    make_rig: MakeRig, password_path: Path
) -> None:
    past = time.time() - 2 * 3600
    os.utime(password_path, (past, past))
    # The first login succeeds (without a Date header); the rotation meets a 400.
    sim = Simulator(password=OLD, password_change_required=False, api_key=API_KEY)
    sim.login_script.extend([LoginFault("no_date"), LoginFault("status", 400)])
    rig = await rotating_rig(make_rig, password_path, "1h", sim=sim)
    await until(lambda: rig.sim.password_changes == 1)
    await until(lambda: stored(password_path) == rig.sim.password)
    registry = rig.gateway.metrics.registry
    # Counted once the schedule has seen the new password kept in the file, a moment later.
    await until(
        lambda: registry.get_sample_value("wa_gateway_password_rotations_total", {"result": "ok"})
    )
    async with rig.client.get("/_gateway/metrics") as response:
        text = await response.text()
    assert 'wa_gateway_password_rotations_total{result="invalid_answer"} 1.0' in text
    assert 'wa_gateway_password_rotations_total{result="ok"} 1.0' in text
    assert await send_messages(rig, 5) == [201] * 5


async def test_the_schedule_waits_a_whole_interval_after_a_rotation_whatever_the_file_says(
    make_rig: MakeRig, password_path: Path
) -> None:
    """A file system whose clock lags (or lies) must not turn the schedule into a loop."""
    age(password_path, 2 * 3600)
    rig = await rotating_rig(make_rig, password_path, "1h")
    await until(lambda: rig.sim.password_changes == 1)
    await until(lambda: stored(password_path) == rig.sim.password)
    age(password_path, 2 * 3600)  # the rotated file looks old at once
    await asyncio.sleep(0.5)
    assert rig.sim.password_changes == 1


async def test_requests_that_joined_a_failed_rotation_log_in_plainly(
    make_rig: MakeRig, password_path: Path
) -> None:
    rig = await rotating_rig(make_rig, password_path)
    await until(lambda: rig.sim.logins == 1)
    account = rig.gateway.webapp.account
    rig.sim.login_delay = 0.2
    rig.sim.login_script.append(LoginFault("status", 400))  # the rotation is refused
    rotation = asyncio.ensure_future(rig.gateway.pool.rotate(account))
    await asyncio.sleep(0.05)  # the rotation is in flight: requests that need a token join it
    rig.gateway.pool.invalidate(account, await rig.gateway.pool.token(account))
    assert await send_messages(rig, 20) == [201] * 20
    assert isinstance(await rotation, LoginFailed)
    assert rig.sim.login_attempts == 3  # the first login, the rotation, one plain login


async def test_a_fresh_password_file_is_not_rotated(make_rig: MakeRig, password_path: Path) -> None:
    rig = await rotating_rig(make_rig, password_path, "1h")
    assert await send_messages(rig, 5) == [201] * 5
    assert rig.sim.password_changes == 0
    assert stored(password_path) == OLD


@pytest.mark.parametrize("revokes", [False, True], ids=["tokens-survive", "tokens-revoked"])
async def test_requests_flow_while_the_gateway_rotates(
    make_rig: MakeRig, password_path: Path, revokes: bool
) -> None:
    rig = await rotating_rig(make_rig, password_path, password_change_revokes=revokes)
    await until(lambda: rig.sim.logins == 1)
    rig.sim.login_delay = 2.0  # the rotation is under way while the requests arrive
    account = rig.gateway.webapp.account
    rotation = asyncio.ensure_future(rig.gateway.pool.rotate(account))
    statuses = await send_messages(rig, 200)
    assert not rotation.done()  # all 200 were served while the rotation was in flight
    await rotation
    statuses += await send_messages(rig, 50)
    assert statuses == [201] * 250
    assert rig.sim.login_attempts == 2  # the first login and the rotation, nothing more
    assert rig.sim.password == stored(password_path)


@pytest.mark.parametrize("revokes", [False, True], ids=["tokens-survive", "tokens-revoked"])
async def test_a_password_changed_by_another_process_is_picked_up_from_the_file(
    make_rig: MakeRig, password_path: Path, revokes: bool
) -> None:
    rig = await rotating_rig(make_rig, password_path, password_change_revokes=revokes)
    assert await send_messages(rig, 5) == [201] * 5
    logins = rig.sim.login_attempts
    # Another process (rotate-password, a second gateway) rotates through its own handle.
    other = PasswordFile(password_path)
    await log_in(
        other,
        lambda password, new: rig.gateway.webapp._post_login(
            rig.gateway.webapp.account, password, new
        ),
        rotate=True,
        rotate_if_required=False,
        lock_wait=1.0,
    )
    assert await send_messages(rig, 20) == [201] * 20
    # Revoked: the pooled token meets one 401, and one login reads the new password from the file.
    assert rig.sim.login_attempts - logins == 1 + revokes


async def test_a_rotation_whose_answer_was_lost_is_finished_and_serving_never_stops(
    make_rig: MakeRig, password_path: Path
) -> None:
    rig = await rotating_rig(make_rig, password_path, password_change_revokes=True)
    await until(lambda: rig.sim.logins == 1)
    rig.sim.login_script.append(LoginFault("lose_answer"))
    account = rig.gateway.webapp.account
    outcome = await rig.gateway.pool.rotate(account)
    assert isinstance(outcome, WebappUnavailable)
    new = rig.sim.password
    assert new != OLD
    assert stored(password_path) == OLD
    # The old token was revoked with the change: the next request's 401 makes the pool log in,
    # which tries the waiting password first, finishes the rotation, and the request is replayed.
    assert await send_messages(rig, 10) == [201] * 10
    assert stored(password_path) == new
    assert not PasswordFile(password_path).next_path.exists()
    assert rig.logs.named("password.recovered")
    assert_no_password_leaked(rig, OLD, new)


async def test_a_webapp_that_takes_the_new_password_after_the_gateway_gave_up_keeps_it_safe(
    make_rig: MakeRig, password_path: Path
) -> None:
    """The rotating login times out, the Webapp acts on it a second later: the next login,
    before that, finds the old password working and must still keep the new one; the login
    after it finds the new one working and finishes the rotation. At no point does the Webapp
    hold a password that neither file holds."""
    rig = await make_rig(
        password=OLD,
        env={
            "WA_PASSWORD": None,
            "WA_PASSWORD_FILE": str(password_path),
            "WA_PASSWORD_ROTATE_EVERY": "30d",
            "GATEWAY_LOGIN_TIMEOUT": "0.5",
        },
    )
    pending = PasswordFile(password_path).next_path

    def known() -> bool:
        held = {stored(password_path), *([stored(pending)] if pending.exists() else [])}
        return rig.sim.password in held

    await until(lambda: rig.sim.logins == 1)
    rig.sim.login_script.append(LoginFault("late", delay=1.0))
    outcome = await rig.gateway.pool.rotate(rig.gateway.webapp.account)
    assert isinstance(outcome, WebappUnavailable)  # timed out
    assert rig.sim.password == OLD
    rig.sim.revoke_all()  # a login now, before the Webapp acts
    assert await send_messages(rig, 5) == [201] * 5
    assert known()
    assert pending.exists()
    await until(lambda: rig.sim.password != OLD)  # the Webapp acts, the gateway is long gone
    assert known()
    rig.sim.revoke_all()  # the next login takes the new password from <file>.next
    assert await send_messages(rig, 5) == [201] * 5
    assert stored(password_path) == rig.sim.password
    assert not pending.exists()


# --- wa-gateway rotate-password -------------------------------------------------------------------


@pytest.fixture
async def webapp(aiohttp_server: AiohttpServer) -> tuple[Simulator, str]:
    sim = Simulator(password=OLD, password_change_required=False)
    server = await aiohttp_server(sim.make_app())
    return sim, str(server.make_url("")).rstrip("/")


async def rotate_password(env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """``python -m gateway rotate-password`` as an asyncio subprocess (the simulator runs in this
    event loop, which a blocking subprocess call would stall)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "rotate-password",
        env=child_env({"PYTHONPATH": str(REPO), **env}),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def env_for(password_path: Path) -> dict[str, str]:
    return {
        **TEST_ENV,
        "WA_PASSWORD": "",
        "WA_API_KEY": "",
        "WA_PASSWORD_FILE": str(password_path),
    }


async def test_rotate_password_changes_it_at_the_webapp_and_in_the_file(
    webapp: tuple[Simulator, str], env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    sim, url = webapp
    status, out, err = await rotate_password({**env_for, "WA_WEBAPP_URL": url}, tmp_path)
    assert status == 0, err
    new = stored(password_path)
    assert sim.password == new != OLD
    assert out == f"wa-gateway: password rotated; the new one is in {password_path}\n"
    assert "password.rotated" in err
    for secret in (OLD, new, *sim.issued_tokens):
        assert secret not in out + err
    assert len(sim.tokens) == 1  # its token is left to expire, not logged out


async def test_rotate_password_reports_a_refusal_and_changes_nothing(
    webapp: tuple[Simulator, str], env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    sim, url = webapp
    sim.password = "Changed-elsewhere-5%"
    status, out, err = await rotate_password({**env_for, "WA_WEBAPP_URL": url}, tmp_path)
    assert status == 1
    assert "rotation failed (bad_credentials)" in err
    assert "Traceback" not in err
    assert out == ""
    assert stored(password_path) == OLD
    assert sim.password == "Changed-elsewhere-5%"


async def test_rotate_password_that_cannot_go_ahead_says_to_run_it_again_once_resolved(
    webapp: tuple[Simulator, str], env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    """A ``<file>.next`` without a password stops the rotation; the advice is this command's,
    not the serving gateway's ("see the gateway's log")."""
    sim, url = webapp
    PasswordFile(password_path).next_path.write_text("")
    status, out, err = await rotate_password({**env_for, "WA_WEBAPP_URL": url}, tmp_path)
    assert status == 1
    assert out == ""
    [verdict] = [line for line in err.splitlines() if line.startswith("wa-gateway: ")]
    assert verdict.startswith("wa-gateway: rotation failed (error): ")
    assert verdict.endswith("This command does not retry; run it again once that is resolved.")
    assert sim.password == OLD


async def test_rotate_password_reports_a_new_password_it_could_not_rename_into_place(
    aiohttp_server: AiohttpServer, env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    """The Webapp took the new password, but the file could not be replaced (here a directory
    took its place meanwhile): exit 1, and the new password waits in ``<file>.next``, where the
    next login finds it."""
    sim = Simulator(password=OLD, password_change_required=False)

    def block_the_file() -> None:
        password_path.unlink()
        (password_path / "in-the-way").mkdir(parents=True)

    @web.middleware
    async def replace_the_file(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if sim.password != OLD:  # the change took effect with this login: before its answer
            block_the_file()
        return response

    app = sim.make_app()
    app.middlewares.append(replace_the_file)
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    status, out, err = await rotate_password({**env_for, "WA_WEBAPP_URL": url}, tmp_path)
    assert status == 1
    assert out == ""
    assert "password.commit_failed" in err
    waiting = PasswordFile(password_path).next_path
    assert f"the Webapp took the new password, but it waits in {waiting}" in err
    assert waiting.read_text(encoding="utf-8").strip() == sim.password != OLD
    assert "Traceback" not in err
    for secret in (OLD, sim.password, *sim.issued_tokens):
        assert secret not in out + err


async def test_rotate_password_needs_a_password_file(tmp_path: Path) -> None:
    env = {**TEST_ENV, "WA_WEBAPP_URL": "http://127.0.0.1:9"}
    status, _out, err = await rotate_password(env, tmp_path)
    assert status == 2
    assert err.startswith("wa-gateway: configuration error: WA_PASSWORD_FILE")
    assert err.count("\n") == 1


async def test_a_webapp_that_does_not_answer_in_time_fails_the_rotation_cleanly(
    webapp: tuple[Simulator, str], env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    sim, url = webapp
    sim.login_delay = 5.0
    env = {**env_for, "WA_WEBAPP_URL": url, "GATEWAY_LOGIN_TIMEOUT": "0.5"}
    status, out, err = await rotate_password(env, tmp_path)
    assert status == 1
    assert "no answer within GATEWAY_LOGIN_TIMEOUT (0.5 s)" in err
    assert out == ""
    assert stored(password_path) == OLD
    assert sim.password == OLD  # the simulator gave up with its client


async def test_an_unreachable_webapp_fails_the_rotation_cleanly(
    env_for: dict[str, str], password_path: Path, tmp_path: Path
) -> None:
    status, _out, err = await rotate_password(
        {**env_for, "WA_WEBAPP_URL": "http://127.0.0.1:9"}, tmp_path
    )
    assert status == 1
    [verdict] = [line for line in err.splitlines() if line.startswith("wa-gateway: ")]
    assert verdict.startswith("wa-gateway: rotation failed (webapp_unavailable): ")
    # It runs once: the serving gateway's "keeps retrying" would be untrue here.
    assert "keeps retrying" not in err
    assert verdict.endswith(
        "This command does not retry; check that the Webapp is up and reachable, then run it again."
    )
    assert stored(password_path) == OLD
    # Nothing reached the Webapp, but the gateway cannot know that: the new password waits.
    assert PasswordFile(password_path).next_path.exists()
