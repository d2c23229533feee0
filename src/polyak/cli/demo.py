"""``polyak demo``: train an MLP on scikit-learn's digits with polyak's SGD."""

from __future__ import annotations

import argparse

from polyak.demo.backends import BACKENDS
from polyak.demo.errors import DemoError
from polyak.demo.settings import Settings

DESCRIPTION = f"""\
Train a small multilayer perceptron to read the 8x8 handwritten digits that ship
with scikit-learn (1,797 images, no download; a fixed quarter held out for
testing), with SGD(momentum={Settings.momentum}, nesterov=True), a cosine learning-rate schedule
with warmup, decoupled weight decay on every weight but the biases,
global_clipnorm={Settings.global_clipnorm} and an EMA of the weights. By default the forward and
backward passes are NumPy: no framework is needed. --backend torch trains the
same model, from the same initial weights, as a PyTorch nn.Module (autograd's
backward, polyak updating the parameters in place); --backend jax with jax.grad
and a jax.jit-compiled opt.stateless_apply.

Shows a progress bar per epoch, then test accuracy with the raw and the EMA
weights, time per epoch and steps per second; writes training.png (loss and
accuracy per epoch, raw vs EMA), metrics.json (the same numbers) and
checkpoint.ckpt (model and optimizer, written by polyak.save) with checkpoint.progress.json
(settings, metrics so far, data order), after every epoch, under --out.
"""

EPILOG = """\
examples:
  polyak demo                          the default run (under a minute on 2 CPU cores)
  polyak demo --epochs 30 --stop-after 10 && polyak demo --resume
                                       a run in two halves, with the numbers of an
                                       uninterrupted one (bit for bit on NumPy)
  polyak demo --backend torch          the same run on PyTorch (--backend jax: on JAX)
"""


def _int_at_least(minimum, kind):
    """An argparse type: an integer of at least ``minimum``, else a usage error naming ``kind``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {kind}. Received: {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "demo", help="train an MLP on scikit-learn's digits with polyak's SGD; plot and checkpoint it",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Settings()
    parser.add_argument("--epochs", type=_positive_int, metavar="N",
                        help=f"epochs to train (default: {defaults.epochs})")
    parser.add_argument("--batch-size", type=_positive_int, metavar="N",
                        help=f"examples per optimizer step (default: {defaults.batch_size})")
    parser.add_argument("--seed", type=_non_negative_int, metavar="N",
                        help=f"seed of the initial weights and the data order (default: {defaults.seed})")
    parser.add_argument("--backend", choices=BACKENDS,
                        help=f"the array library to train on (default: {defaults.backend})")
    parser.add_argument("--out", default="polyak-demo", metavar="DIR",
                        help="directory for training.png, metrics.json and checkpoint.ckpt (default: ./polyak-demo)")
    parser.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                        help="continue a run from its checkpoint (default: DIR/checkpoint.ckpt), with the "
                             "settings it started with")
    parser.add_argument("--stop-after", type=_positive_int, metavar="N",
                        help="stop after epoch N, leaving a checkpoint that --resume continues")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bars")
    parser.set_defaults(run=run, user_errors=(DemoError,))


def run(args) -> int:
    from polyak.demo import run as run_demo

    run_demo(args.out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
             epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, backend=args.backend)
    return 0
