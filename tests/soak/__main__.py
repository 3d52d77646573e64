"""``python -m tests.soak``: the soak's options; runs it and prints the report (progress on
stderr), exiting 0 when every expectation held, else 1 with the gateway's output kept."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from .run import DEFAULT_CONCURRENCY, DEFAULT_SECONDS, MAX_SECONDS, run_soak


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
