"""``polyak bench``: the benchmark harness (``python -m polyak.bench``) as a sub-command."""

from __future__ import annotations

import argparse

from polyak.bench import __main__ as harness


class BenchError(Exception):
    """A user error in ``polyak bench``'s arguments."""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="time polyak's step against torch.optim.SGD, optax and Keras, side by side",
        description=harness.__doc__ + "\n\nReports the median step time, the ratio to torch.optim.SGD(fused=True) "
        "and to the memory-bandwidth floor measured in the same run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.build_parser(parser)
    parser.set_defaults(run=_run, user_errors=(BenchError,))


def _run(args) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise BenchError(f"--repeats must be >= 1 and --warmup >= 0. Received: {args.repeats}, {args.warmup}")
    return harness.main(_argv(args))


def _argv(args):
    argv = ["--workloads", *args.workloads, "--contenders", *args.contenders,
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device]
    return argv + (["--json", args.json] if args.json else [])
