"""``polyak bench``: the benchmark harness (``python -m polyak.bench``) as a sub-command."""

from __future__ import annotations

from polyak.bench import command


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="time polyak's step against torch.optim.SGD, optax and Keras, side by side")
    command.build_parser(parser)
    parser.set_defaults(run=command.run, user_errors=(command.BenchError,))
