"""The ``polyak`` command (also ``python -m polyak``): one sub-command per job.

A user error prints ``polyak <command>: error: <message>`` on one line and
exits with status 2; Ctrl-C exits with status 130; neither shows a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import polyak
from polyak.cli import bench, demo

_COMMANDS = (demo, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyak",
        description="polyak: Keras 3's SGD (every argument, method and number) on the arrays you already have.",
        epilog="Run `polyak COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"polyak {polyak.__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except args.user_errors as error:
        print(f"polyak {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output left (`polyak demo | head`): stop quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
