"""The benchmark's command line, shared by ``polyak bench`` and ``python -m polyak.bench``."""

from __future__ import annotations

import argparse

from polyak.bench import results_file
from polyak.bench.contenders import CONTENDERS, contender_name
from polyak.bench.harness import run as run_harness
from polyak.bench.spread import NOISY
from polyak.bench.workloads import WORKLOADS

DESCRIPTION = """\
Time one optimizer step of polyak against torch.optim.SGD (foreach and fused),
optax and Keras, side by side on the same workloads, and report each contender's
median step time, its ratio to torch.optim.SGD(fused=True) and to the
memory-bandwidth floor measured in the same run. A contender whose repeats spread
widely is named in a warning: its median is then noise."""

EPILOG = f"""\
contenders:
  {' '.join(CONTENDERS)}
  (the old names, such as "torch fused", still work, quoted)

examples:
  polyak bench --workloads W2 --contenders polyak-numpy torch-fused --repeats 5
  polyak bench --json benchmarks/results/    a new file, benchmarks/results/bench-DATE-TIME.json
  polyak bench --json run.json --force       overwrite run.json
"""


class BenchError(Exception):
    """A user error in the benchmark's arguments: printed on one line, exit status 2."""


def _contender(text):
    name = contender_name(text)
    if name not in CONTENDERS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(CONTENDERS)})")
    return name


def build_parser(parser=None) -> argparse.ArgumentParser:
    """The options, on ``parser`` (a sub-command's) or on a new parser."""
    parser = parser or argparse.ArgumentParser(prog="python -m polyak.bench")
    parser.description, parser.epilog, parser.formatter_class = (
        DESCRIPTION, EPILOG, argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS), metavar="W",
                        help=f"which workloads to run, of {' '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), type=_contender, metavar="NAME",
                        help="which contenders to time, listed below (default: all)")
    parser.add_argument("--repeats", type=int, default=15,
                        help=f"timed steps per contender; the median is reported, and a warning when the "
                             f"interquartile range exceeds {NOISY * 100:.0f}%% of it (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the arrays live; cuda: PyTorch's and JAX's first GPU (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH",
                        help="write the results as JSON too: to a new timestamped file if PATH is a directory, "
                             "else to the file PATH, which must not exist unless --force (default: none)")
    parser.add_argument("--force", action="store_true", help="let --json overwrite an existing file (default: never overwrite)")
    return parser


def run(args) -> int:
    """Check the arguments (raising ``BenchError``), run the benchmark, write ``--json``."""
    if args.repeats < 1 or args.warmup < 0:
        raise BenchError(f"--repeats must be >= 1 and --warmup >= 0. Received: {args.repeats}, {args.warmup}")
    if args.device == "cuda" and not _cuda_available():
        raise BenchError("--device cuda needs PyTorch with a CUDA device; none was found")
    try:
        path = results_file.target(args.json, args.force) if args.json else None
    except results_file.ResultsPathError as error:
        raise BenchError(str(error)) from None
    contenders = list(dict.fromkeys(args.contenders))  # a name given twice is timed once
    report = run_harness(args.workloads, contenders, args.repeats, args.warmup, device=args.device)
    if path is not None:
        print(f"\nwrote {results_file.write(report, path, args.force)}")
    return 0


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
