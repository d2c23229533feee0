"""``python -m polyak.bench``: the benchmark without the ``polyak`` command around it."""

import sys

from polyak.bench.command import BenchError, build_parser, run


def main(argv=None) -> int:
    """Parse ``argv`` (default: the command line), run, return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as error:
        print(f"polyak bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
