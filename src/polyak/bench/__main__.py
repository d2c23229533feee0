"""``python -m polyak.bench``: time polyak against torch.optim.SGD, optax and Keras."""

import argparse
import sys

from polyak.bench.contenders import CONTENDERS
from polyak.bench.harness import run, save
from polyak.bench.workloads import WORKLOADS


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="python -m polyak.bench", description=__doc__)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS),
                        help="which workloads to run (default: all)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS),
                        metavar="NAME", help=f"which contenders to time (default: all of {list(CONTENDERS)})")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the arrays live (cuda: PyTorch's and JAX's first GPU; default: cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        print("polyak bench: --repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.device == "cuda" and not _cuda_available():
        print("polyak bench: --device cuda needs PyTorch with a CUDA device; none was found", file=sys.stderr)
        return 2
    report = run(args.workloads, args.contenders, args.repeats, args.warmup, device=args.device)
    if args.json:
        save(report, args.json)
        print(f"\nwrote {args.json}")
    return 0


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
