"""What one benchmark is asked to do (targets, seconds, connections, the load generator, the
gateway's log level), and how long that takes: about, and at the very most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .load import LOAD_SLACK
from .servers import START_TIMEOUT, STOP_GRACE
from .webapp import SETTLE_TIMEOUT

TARGETS = ("direct", "aiohttp", "nginx", "gateway")
DEFAULT_SECONDS = 10
MAX_SECONDS = 300
DEFAULT_CONNECTIONS = 32
WARMUP = 1  # seconds of unmeasured load before each run: pools filled, caches warm
SETUP_ESTIMATE = 1.5  # seconds per server to start, per run to spawn the load and settle
LoadGen = Literal["auto", "wrk", "python"]


@dataclass(frozen=True)
class Options:
    """What to run: ``make bench`` takes the defaults, the test a short run of two targets."""

    seconds: int = DEFAULT_SECONDS  # of measured load per target and shape
    connections: int = DEFAULT_CONNECTIONS
    warmup: int = WARMUP
    targets: tuple[str, ...] = TARGETS
    loadgen: LoadGen = "auto"
    # The baselines write no access log, so neither does the gateway by default; "info" (the
    # gateway's own default) measures the access log's cost too.
    log_level: str = "warning"

    def runs(self) -> int:
        return len(self.targets) * 2  # two shapes

    def expected_seconds(self) -> float:
        """About how long the whole benchmark takes."""
        per_run = self.warmup + self.seconds + SETUP_ESTIMATE
        return SETUP_ESTIMATE * (len(self.targets) + 1) + self.runs() * per_run

    def limit_seconds(self) -> float:
        """The hard limit: every server's start and every run's deadlines, at worst."""
        per_run = self.warmup + self.seconds + 2 * LOAD_SLACK + 2 * SETTLE_TIMEOUT
        per_server = START_TIMEOUT + STOP_GRACE
        return per_server * (len(self.targets) + 1) + self.runs() * per_run
