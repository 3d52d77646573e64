"""``python -m tests.bench``: the command. Its options; the benchmark run within its hard limit,
SIGTERM and Ctrl-C unwinding it so that every server is killed; the report printed and the exit
status. Also the internal roles the benchmark starts as processes of their own: ``simulator``,
``proxy`` and ``load``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp

from ..harness.serving import serve_until_orphaned
from .errors import BenchError
from .options import DEFAULT_CONNECTIONS, DEFAULT_SECONDS, MAX_SECONDS, TARGETS, WARMUP, Options
from .proxy import bare_proxy
from .pyload import load_main
from .run import run_bench
from .simulator import simulator_apps

# The first line of the package's docstring.
DESCRIPTION = (
    "The benchmark: the gateway against the Webapp reached directly, a bare aiohttp proxy and "
    "nginx."
)


async def bench_main(options: Options) -> int:
    """Run the benchmark within its hard limit; print the report; the exit status."""
    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so every server is still killed.
    main = asyncio.current_task()
    assert main is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    print(
        f"wa-gateway bench: {', '.join(options.targets)}; about "
        f"{options.expected_seconds():.0f} s, at most {options.limit_seconds():.0f} s",
        flush=True,
    )
    try:
        async with asyncio.timeout(options.limit_seconds()):
            report = await run_bench(options, say=True)
    except (BenchError, TimeoutError, aiohttp.ClientError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        print("bench stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    print()
    print(report.render())
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=DESCRIPTION)
    # String defaults go through type=int too, so a bad BENCH_* value is a usage error.
    seconds = os.environ.get("BENCH_SECONDS", str(DEFAULT_SECONDS))
    connections = os.environ.get("BENCH_CONNECTIONS", str(DEFAULT_CONNECTIONS))
    parser.add_argument(
        "--seconds", type=int, default=seconds, help="of load per target and shape (10)"
    )
    parser.add_argument("--connections", type=int, default=connections, help="(32)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="seconds, before each run")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (all)")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if on PATH"
    )
    parser.add_argument(
        "--log-level",
        choices=("warning", "info"),
        default=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        help="the gateway's; info adds its access log (warning)",
    )
    roles = parser.add_subparsers(dest="role", help="internal: the processes the bench starts")
    simulator = roles.add_parser("simulator")
    simulator.add_argument("port", type=int)
    simulator.add_argument("control_port", type=int)
    simulator.add_argument("media_dir")
    proxy = roles.add_parser("proxy")
    proxy.add_argument("port", type=int)
    proxy.add_argument("upstream")
    load = roles.add_parser("load")
    load.add_argument("spec", help="JSON: url, shape, headers, seconds, connections")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be 1 to {MAX_SECONDS}")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be 1 to 1000")
    if not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--warmup must be 0 to {MAX_SECONDS}")
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "simulator":
        apps = simulator_apps(args.media_dir)
        asyncio.run(serve_until_orphaned([(apps[0], args.port), (apps[1], args.control_port)]))
        return 0
    if args.role == "proxy":
        asyncio.run(serve_until_orphaned([(bare_proxy(args.upstream), args.port)]))
        return 0
    if args.role == "load":
        load_main(args.spec)
        return 0
    options = Options(
        seconds=args.seconds,
        connections=args.connections,
        warmup=args.warmup,
        targets=tuple(name for name in TARGETS if name in args.targets.split(",")),
        loadgen=args.loadgen,
        log_level=args.log_level,
    )
    try:
        return asyncio.run(bench_main(options))
    except KeyboardInterrupt:  # asyncio.run cancelled the benchmark: its servers are killed
        print("bench interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
