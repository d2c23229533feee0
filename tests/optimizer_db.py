"""The test database: what polyak is tested on, in one place (torch's ``OptimizerInfo`` idea).

* ``CONFIGS``: every optimizer configuration the tests run, one table. Each entry is
  plain data (SGD keywords, a schedule spec, weight-decay exclusions, a pattern of
  missing gradients) tagged with the ``family`` it belongs to; tests pick families
  with :func:`configs` and read what an entry supports from its properties.
* ``BACKENDS``, ``TIERS``, ``DTYPES``: the axes a configuration runs along;
  :func:`parity_cases` prunes their product to the combinations that differ.
* ``BAD_ARGUMENTS``, ``BAD_CONSTRUCTIONS``, ``BAD_APPLY_INPUTS``: bad input with the
  error type and a fragment of the message it must raise.

Tier forcing and detection live here, once: :func:`use_tier` and :func:`tier_that_ran`.

Driven from here: conformance with Keras (``test_conformance``, through
``reference.py``), tier parity (``test_tiers``), the error tests (``test_errors``),
and the configurations of ``test_fused``, ``test_nonfinite``, ``test_backends`` and
``test_loss_scale``. (``test_distributed_sharded`` keeps its own two, which its
subprocesses read.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

import polyak
from polyak import schedules

BACKENDS = ("numpy", "torch", "jax")
TIERS = ("reference", "cpu_fused")
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Options Keras does not have: configurations using them are not compared with Keras.
POLYAK_ONLY = ("master_weights", "skip_nonfinite")


# --- tiers -----------------------------------------------------------------------------------
def use_tier(opt, name):
    """Ask ``opt`` for tier ``name`` (one of ``TIERS``): ``opt.fused`` is the public switch.
    A tier that cannot take the input falls back to the reference."""
    if name not in TIERS:
        raise ValueError(f"Unknown tier {name!r}; the tiers are {TIERS}")
    target = getattr(opt, "inner_optimizer", opt)
    target.fused = name != "reference"
    return opt


def tier_that_ran(opt):
    """The tier that ran ``opt``'s last ``apply`` ("reference" or "cpu_fused"): the optimizer
    records it (a ``LossScaleOptimizer`` runs its inner optimizer's step inside its own)."""
    return opt._last_tier


def fused_takes(config, backend, dtype, tier="cpu_fused"):
    """Whether the fused tier takes ``config`` on float arrays of ``backend`` and ``dtype``
    when every gradient is present (see ``polyak/tiers/cpu_fused.py``): contiguous
    float32/float64 NumPy arrays or CPU torch tensors (``skip_nonfinite`` too, guarded by the
    tier). (No constraint or ``overwrite_with_gradient``: no configuration here sets one.)

    ``tier="triton"`` (``polyak/tiers/triton_fused.py``): torch tensors of those dtypes, and
    float16/bfloat16 unless a 16-bit gradient is clipped by norm (without master weights, or
    with them but without accumulation, whose mean is float32)."""
    options = config.options
    if tier == "triton" and dtype in ("float16", "bfloat16"):
        clips_16_bits = not (options.get("master_weights") and options.get("gradient_accumulation_steps"))
        return backend == "torch" and not (clips_16_bits and config.clips_by_norm)
    return backend in ("numpy", "torch") and dtype in ("float32", "float64")


# --- configurations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One optimizer configuration: what ``polyak.SGD`` (and Keras's, when it has every
    option) is built with, and the pattern of the gradients it is fed."""

    family: str
    name: str
    options: dict = field(default_factory=dict)  #: SGD keywords; ``learning_rate`` a float when given
    schedule: tuple | None = None  #: (class name, kwargs) of a schedule Keras and polyak both have
    exclude: str | None = None  #: decay exclusion: "names" (var_names=["bias"]) or "list" (weight 1)
    none_gradient_every: int = 0  #: every k-th step, weight 1 gets no gradient

    @property
    def id(self):
        return f"{self.family}:{self.name}"

    @property
    def in_keras(self):
        return not any(self.options.get(k) for k in POLYAK_ONLY)

    @property
    def clips_by_norm(self):
        """Norms are summed in another order by the fused tier: equal to the last bit or so."""
        return bool(self.options.get("clipnorm") or self.options.get("global_clipnorm"))

    def with_options(self, **options):
        return replace(self, options={**self.options, **options})

    def learning_rate(self, module=polyak):
        if self.schedule is None:
            return self.options.get("learning_rate", 0.01)
        name, kwargs = self.schedule
        return getattr(module.optimizers.schedules, name)(**kwargs)

    def optimizer(self, module=polyak, variables=None):
        """The SGD of ``module`` (polyak or keras); ``variables`` are needed for an exclusion."""
        opt = module.optimizers.SGD(**{**self.options, "learning_rate": self.learning_rate(module)})
        if self.exclude == "names":
            opt.exclude_from_weight_decay(var_names=["bias"])
        elif self.exclude == "list":
            opt.exclude_from_weight_decay(var_list=[variables[1]])
        return opt


def _named(family, entries, **common):
    return [Config(family, name, **{**common, **entry}) for name, entry in entries.items()]


def _options_id(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "plain"


# Keras's option grid: every combination of these, against Keras on NumPy and torch.
MOMENTUM = [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]
CLIPPING = [{}, {"clipnorm": 1.0}, {"clipvalue": 0.5}, {"global_clipnorm": 2.0}]
DECAY = [(None, None), ({"weight_decay": 0.05}, "names"), ({"weight_decay": 0.05}, "list")]
EMA = [{}, {"use_ema": True}, {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 2}]
ACCUMULATION = [{}, {"gradient_accumulation_steps": 3}]
LOSS_SCALE = [{}, {"loss_scale_factor": 64.0}]
MISSING_GRADIENTS = [0, 3]
GRID_AXES = [MOMENTUM, CLIPPING, DECAY, EMA, ACCUMULATION, LOSS_SCALE, MISSING_GRADIENTS]
GRID_CHOICES = list(itertools.product(*(range(len(axis)) for axis in GRID_AXES)))


def _grid_config(choice):
    m, c, (d, exclude), e, a, ls, none_every = (axis[k] for axis, k in zip(GRID_AXES, choice))
    options = {"learning_rate": 0.05, **m, **c, **(d or {}), **e, **a, **ls}
    return Config("grid", f"{_options_id(options)},exclude={exclude},none_every={none_every}", options,
                  exclude=exclude, none_gradient_every=none_every)


def pairwise_cover(choices):
    """A few rows of ``choices`` in which every pair of option values (of two axes)
    appears at least once: greedy, deterministic."""
    def pairs(choice):
        return {(i, choice[i], j, choice[j]) for i, j in itertools.combinations(range(len(choice)), 2)}

    uncovered = set().union(*(pairs(c) for c in choices))
    cover = []
    while uncovered:
        best = max(choices, key=lambda c: len(pairs(c) & uncovered))
        cover.append(best)
        uncovered -= pairs(best)
    return cover


GRID = [_grid_config(choice) for choice in GRID_CHOICES]
#: Every pair of option values of the grid, in a few configurations (for costly runs: ``jax.jit``).
GRID_PAIRWISE = [_grid_config(choice) for choice in pairwise_cover(GRID_CHOICES)]

SCHEDULES = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5}),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5, "staircase": True}),
    ("PiecewiseConstantDecay", {"boundaries": [2, 5], "values": [0.1, 0.05, 0.01]}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 5, "power": 2.0}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "cycle": True}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5, "staircase": True}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 6, "alpha": 0.1}),
    ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 6, "warmup_target": 0.2, "warmup_steps": 3}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 2}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 2, "t_mul": 1.0, "m_mul": 0.5}),
]
SCHEDULE_EXTRAS = {
    "momentum": {"momentum": 0.9},
    "all-features": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "global_clipnorm": 1.0, "use_ema": True},
    "accumulation": {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3},
}
#: Every schedule under a few feature sets, weights named so ``exclude="names"`` finds the bias.
SCHEDULED = [
    Config("schedules", f"{schedule[0]}-{i}-{extra}", dict(options), schedule=schedule, exclude="names")
    for i, schedule in enumerate(SCHEDULES) for extra, options in SCHEDULE_EXTRAS.items()
]

#: The fused kernel's own options, every combination, under a warmup schedule.
WARMUP = ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "warmup_target": 0.2,
                          "warmup_steps": 2})
KERNEL_GRID = [
    Config("kernel", _options_id(options), options, schedule=WARMUP)
    for options in (
        dict(momentum=m, nesterov=n, **clip, **extra)
        for (m, n), clip, extra in itertools.product(
            [(0.0, False), (0.9, False), (0.9, True)],
            [{}, {"clipvalue": 0.1}, {"clipnorm": 0.5}, {"global_clipnorm": 1.0}],
            [{}, {"weight_decay": 0.1, "use_ema": True, "ema_overwrite_frequency": 3},
             {"gradient_accumulation_steps": 3, "use_ema": True, "loss_scale_factor": 16.0}],
        )
    )
]

#: Configurations met by guarded steps (``skip_nonfinite``) and bad gradients.
NONFINITE = _named("nonfinite", {
    "momentum": dict(options=dict(momentum=0.9)),
    "nesterov-ema-overwrite": dict(options=dict(momentum=0.9, nesterov=True, use_ema=True, ema_momentum=0.5,
                                                ema_overwrite_frequency=2)),
    "accumulation-ema": dict(options=dict(momentum=0.5, gradient_accumulation_steps=3, use_ema=True)),
    "decay-global-clip-loss-scale": dict(options=dict(weight_decay=0.1, global_clipnorm=1.0, loss_scale_factor=8.0)),
    "schedule-clipnorm": dict(options=dict(momentum=0.9, clipnorm=1.0),
                              schedule=("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 2,
                                                             "decay_rate": 0.5})),
})

#: Inner optimizers of a ``LossScaleOptimizer`` (its scale, growth and skip against Keras's).
LOSS_SCALED = _named("loss-scaled", {
    "momentum": dict(options={"momentum": 0.9}),
    "ema+decay": dict(options={"momentum": 0.9, "nesterov": True, "use_ema": True, "weight_decay": 0.01}),
    "accumulation": dict(options={"gradient_accumulation_steps": 2, "use_ema": True}),
    "accumulation+ema": dict(options={"gradient_accumulation_steps": 2, "use_ema": True, "weight_decay": 0.01}),
})

#: Every feature at once, and polyak's own options.
FEATURES = _named("features", {
    "all": dict(options=dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=2.0, use_ema=True,
                             ema_momentum=0.9, ema_overwrite_frequency=4, gradient_accumulation_steps=2,
                             loss_scale_factor=4.0),
                schedule=("CosineDecay", {"initial_learning_rate": 0.05, "decay_steps": 30, "alpha": 0.1,
                                          "warmup_target": 0.1, "warmup_steps": 5})),
    "master-weights": dict(options=dict(momentum=0.9, use_ema=True, weight_decay=0.01, clipvalue=1.0,
                                        master_weights=True)),
    "master-weights-accumulation": dict(options=dict(momentum=0.9, nesterov=True, gradient_accumulation_steps=2,
                                                     global_clipnorm=1.0, master_weights=True)),
    "skip-nonfinite": dict(options=dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=2,
                                        skip_nonfinite=True)),
    "skip-nonfinite-clipnorm": dict(options=dict(momentum=0.5, clipnorm=0.2, weight_decay=0.01,
                                                 skip_nonfinite=True), exclude="list"),
})

#: 16-bit weights against Keras (each operation rounded to the weights' dtype).
SIXTEEN_BIT = _named("16-bit", {
    "momentum": dict(options={"momentum": 0.9}),
    "features": dict(options={"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "clipvalue": 1.0,
                              "use_ema": True}),
    "accumulation": dict(options={"gradient_accumulation_steps": 2, "global_clipnorm": 5.0}),
}, exclude="names")

#: The one table.
CONFIGS = GRID + SCHEDULED + KERNEL_GRID + NONFINITE + LOSS_SCALED + FEATURES + SIXTEEN_BIT
assert len({c.id for c in CONFIGS}) == len(CONFIGS), "configuration ids must be unique"


def configs(family):
    """The configurations of ``family``, in table order."""
    found = [c for c in CONFIGS if c.family == family]
    if not found:
        raise KeyError(f"No configuration of family {family!r}")
    return found


def config(config_id):
    """The configuration with id ``family:name``."""
    return next(c for c in CONFIGS if c.id == config_id)


# --- tier parity: the product, pruned -------------------------------------------------------
def parity_cases():
    """``(config, backend, dtype)`` on which every tier must equal the reference tier.

    The fused kernel's grid on NumPy in both of its dtypes and on torch (a third of it;
    a ninth in float64); the Keras grid's pairwise cover (exclusions, missing gradients,
    which the fused tier leaves to the reference call by call); polyak's own options; and
    inputs the fused tier must decline (16-bit weights, JAX arrays) or guard (``skip_nonfinite``).
    """
    kernel = KERNEL_GRID
    cases = [(c, "numpy", d) for c in kernel for d in ("float32", "float64")]
    cases += [(c, "torch", "float32") for c in kernel[::3]]
    cases += [(c, "torch", "float64") for c in kernel[1::9]]
    cases += [(c, "numpy", "float32") for c in GRID_PAIRWISE]
    cases += [(c, b, "float32") for c in configs("features") for b in ("numpy", "torch")]
    cases += [(config("features:master-weights"), "numpy", "float16"),
              (config("features:master-weights-accumulation"), "torch", "bfloat16"),
              (config("features:all"), "numpy", "bfloat16"),
              (KERNEL_GRID[12], "jax", "float32"),
              (config("nonfinite:schedule-clipnorm").with_options(skip_nonfinite=True), "torch", "float64")]
    return cases


# --- bad input ---------------------------------------------------------------------------------
#: SGD keywords, the error type, and text the message must contain.
BAD_ARGUMENTS = [
    ({"momentum": 1.5}, ValueError, "momentum=1.5"),
    ({"momentum": -0.1}, ValueError, "momentum=-0.1"),
    ({"momentum": "0.9"}, TypeError, "momentum='0.9'"),
    ({"nesterov": 1}, TypeError, "nesterov=1"),
    ({"learning_rate": math.inf}, ValueError, "learning_rate=inf"),
    ({"learning_rate": math.nan}, ValueError, "learning_rate=nan"),
    ({"learning_rate": 3.4028235677973366e38}, ValueError, "finite in float32"),
    ({"learning_rate": -0.1}, ValueError, "learning_rate=-0.1"),
    ({"learning_rate": "fast"}, TypeError, "learning_rate='fast'"),
    ({"learning_rate": True}, TypeError, "learning_rate=True"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "clipnorm=1.0, clipvalue=1.0"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "global_clipnorm=1.0"),
    ({"clipnorm": -1.0}, ValueError, "clipnorm=-1.0"),
    ({"global_clipnorm": math.nan}, ValueError, "global_clipnorm=nan"),
    ({"clipvalue": "big"}, TypeError, "clipvalue='big'"),
    ({"weight_decay": -1e-4}, ValueError, "weight_decay=-0.0001"),
    ({"gradient_accumulation_steps": 1}, ValueError, "gradient_accumulation_steps=1"),
    ({"gradient_accumulation_steps": 2.5}, TypeError, "gradient_accumulation_steps=2.5"),
    ({"use_ema": True, "ema_momentum": 1.5}, ValueError, "ema_momentum=1.5"),
    ({"ema_momentum": -0.5}, ValueError, "ema_momentum=-0.5"),
    ({"use_ema": "yes"}, TypeError, "use_ema='yes'"),
    ({"use_ema": True, "ema_overwrite_frequency": 0}, ValueError, "ema_overwrite_frequency=0"),
    ({"ema_overwrite_frequency": 1.5}, TypeError, "ema_overwrite_frequency=1.5"),
    ({"loss_scale_factor": 0.0}, ValueError, "loss_scale_factor=0.0"),
    ({"loss_scale_factor": math.inf}, ValueError, "loss_scale_factor=inf"),
    ({"name": 3}, TypeError, "name=3"),
    ({"lerning_rate": 0.1}, ValueError, "lerning_rate"),
    ({"skip_nonfinite": "yes"}, TypeError, "skip_nonfinite='yes'"),
    ({"master_weights": 1}, TypeError, "master_weights=1"),
]


@dataclass(frozen=True)
class BadConstruction:
    name: str
    make: Callable
    error: type
    text: str


def _lso(*args, **kwargs):
    return polyak.optimizers.LossScaleOptimizer(*args, **kwargs)


#: Other constructors: schedules and ``LossScaleOptimizer``.
BAD_CONSTRUCTIONS = [
    BadConstruction("decay_steps=0", lambda: schedules.ExponentialDecay(0.1, 0, 0.5), ValueError, "decay_steps=0"),
    BadConstruction("decay_steps<0", lambda: schedules.PolynomialDecay(0.1, -3), ValueError, "decay_steps=-3"),
    BadConstruction("warmup_steps<0", lambda: schedules.CosineDecay(0.1, 10, warmup_steps=-1), ValueError,
                    "warmup_steps=-1"),
    BadConstruction("first_decay_steps=0", lambda: schedules.CosineDecayRestarts(0.1, 0), ValueError,
                    "first_decay_steps=0"),
    BadConstruction("boundaries and values", lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1]), ValueError,
                    "length of boundaries"),
    BadConstruction("unsorted boundaries", lambda: schedules.PiecewiseConstantDecay([3, 2], [0.1, 0.2, 0.3]),
                    ValueError, "boundaries=[3, 2]"),
    BadConstruction("string rate", lambda: schedules.ExponentialDecay("a", 10, 0.5), TypeError,
                    "initial_learning_rate='a'"),
    BadConstruction("LSO initial_scale=0", lambda: _lso(polyak.SGD(), initial_scale=0.0), ValueError,
                    "initial_scale=0.0"),
    BadConstruction("LSO initial_scale=inf", lambda: _lso(polyak.SGD(), initial_scale=float("inf")), ValueError,
                    "initial_scale=inf"),
    BadConstruction("LSO dynamic_growth_steps=0", lambda: _lso(polyak.SGD(), dynamic_growth_steps=0), ValueError,
                    "dynamic_growth_steps=0"),
    BadConstruction("LSO of a string", lambda: _lso("sgd"), TypeError, "inner_optimizer='sgd'"),
    BadConstruction("LSO of an LSO", lambda: _lso(_lso(polyak.SGD())), TypeError,
                    "must not itself be a LossScaleOptimizer"),
    BadConstruction("LSO clipnorm", lambda: _lso(polyak.SGD(), clipnorm=1.0), ValueError,
                    "does not support `clipnorm`"),
]


@dataclass(frozen=True)
class BadApply:
    """``make(weights)`` returns ``(grads, variables)`` for ``apply``. ``fresh``: applied by a new
    optimizer (which must stay unbuilt), else by one built on ``weights`` (see :func:`built_for`)."""

    name: str
    backend: str
    make: Callable
    error: type
    text: str
    fresh: bool = False


def _torch():
    import torch

    return torch


def _inference_tensor():
    torch = _torch()
    with torch.inference_mode():
        return torch.zeros(3)


def _read_only(shape):
    w = np.zeros(shape, np.float32)
    w.flags.writeable = False
    return w


BAD_APPLY_INPUTS = [
    # NumPy weights of shapes (3, 2), (2,), (4,)
    BadApply("count", "numpy", lambda w: ([np.ones_like(w[0])], w), ValueError, "1 gradients for 3 variables"),
    BadApply("shape", "numpy", lambda w: ([np.ones((2, 3), np.float32), np.ones(2), np.ones(4)], w), ValueError,
             "must have the variable's shape (3, 2). Received: gradient shape (2, 3)"),
    BadApply("broadcastable shape", "numpy", lambda w: ([np.ones((1, 2), np.float32), np.ones(2), np.ones(4)], w),
             ValueError, "gradient shape (1, 2)"),
    BadApply("string gradient", "numpy", lambda w: (["abc", np.ones(2), np.ones(4)], w), TypeError,
             "real number array"),
    BadApply("object gradient", "numpy", lambda w: ([object(), np.ones(2), np.ones(4)], w), TypeError,
             "variable_0"),
    BadApply("complex gradient", "numpy", lambda w: ([np.ones((3, 2), complex), np.ones(2), np.ones(4)], w),
             TypeError, "complex"),
    BadApply("ragged gradient", "numpy", lambda w: ([np.ones((3, 2)), [[1.0, 2.0], [1.0]], np.ones(4)], w),
             TypeError, "The gradient for variable 'variable_1' is not an array"),
    BadApply("unknown variable", "numpy", lambda w: ([np.ones(2)], [np.zeros(2, np.float32)]), ValueError,
             "Unknown variable"),
    BadApply("all None", "numpy", lambda w: ([None, None, None], w), ValueError, "No gradients provided"),
    BadApply("integer weights", "numpy", lambda w: ([np.ones(2)], [np.zeros(2, np.int64)]), TypeError,
             "floating dtype"),
    BadApply("not an array", "numpy", lambda w: ([np.ones(2)], [[0.0, 0.0]]), TypeError, "type list"),
    BadApply("read-only weight", "numpy", lambda w: ([np.ones(3)], [_read_only(3)]), ValueError, "read-only",
             fresh=True),
    BadApply("NumPy scalar weight", "numpy", lambda w: ([np.float32(1.0)], [np.float32(1.0)]), ValueError,
             "'variable_0' is a NumPy scalar", fresh=True),
    # torch weights: nn.Parameters of shapes (3,), (2,)
    BadApply("mixed kinds", "torch", lambda p: ([_torch().ones(3), np.ones(2)], [p[0], np.zeros(2, np.float32)]),
             TypeError, "'variable_0' is a torch.Tensor and 'variable_1' is a numpy.ndarray", fresh=True),
    BadApply("other device", "torch",
             lambda p: ([_torch().ones(3), _torch().ones(2)], [p[0], _torch().zeros(2, device="meta")]),
             ValueError, "'variable_1' is on meta", fresh=True),
    BadApply("gradient on other device", "torch", lambda p: ([_torch().ones(3, device="meta"), _torch().ones(2)], p),
             ValueError, "The gradient for variable 'variable_0' must be on the optimizer's device cpu"),
    BadApply("integer tensor", "torch", lambda p: ([_torch().ones(3)], [_torch().zeros(3, dtype=_torch().int64)]),
             TypeError, "must have a floating dtype. Received: dtype=torch.int64", fresh=True),
    BadApply("gradient shape", "torch", lambda p: ([_torch().ones(4), _torch().ones(2)], p), ValueError,
             "'variable_0' must have the variable's shape (3,)"),
    BadApply("complex gradient", "torch", lambda p: ([_torch().ones(3, dtype=_torch().complex64), _torch().ones(2)], p),
             TypeError, "real number array"),
    BadApply("sparse gradient", "torch", lambda p: ([_torch().ones(3).to_sparse(), _torch().ones(2)], p), TypeError,
             "must be a dense tensor"),
    BadApply("ragged gradient", "torch", lambda p: ([[[1.0], [1.0, 2.0]], _torch().ones(2)], p), TypeError,
             "The gradient for variable 'variable_0' is not an array"),
    BadApply("inference tensor", "torch", lambda p: ([_torch().ones(3)], [_inference_tensor()]), ValueError,
             "inference tensor", fresh=True),
    BadApply("non-leaf tensor", "torch", lambda p: ([_torch().ones(3)], [p[0] * 2]), ValueError,
             "'variable_0' is a non-leaf torch tensor", fresh=True),
    BadApply("non-leaf tensor among known ones", "torch",
             lambda p: ([_torch().ones(3), _torch().ones(3)], [p[0], p[0] * 2]), ValueError,
             "'variable_1' is a non-leaf torch tensor"),
]


def built_for(backend, tier):
    """An optimizer with every kind of state, stepped a few times on its tier, and its weights."""
    if backend == "torch":
        torch = _torch()
        weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        opt = use_tier(polyak.SGD(momentum=0.9, use_ema=True), tier)
        opt.apply([torch.ones(3), torch.ones(2)], weights)
        return opt, weights
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=s).astype(np.float32) for s in [(3, 2), (2,), (4,)]]
    opt = use_tier(polyak.SGD(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, weight_decay=0.01), tier)
    for _ in range(3):
        opt.apply([np.ones_like(w) for w in weights], weights)
    return opt, weights


# --- arrays and state ------------------------------------------------------------------------------
def to_numpy(value):
    """A NumPy copy of a Variable or an array of any backend (bfloat16 as ml_dtypes' bfloat16)."""
    value = getattr(value, "value", value)
    kind = polyak.backends.kind_of(value)
    if kind == "torch" and str(value.dtype) == "torch.bfloat16":
        import ml_dtypes

        return value.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return np.array(polyak.backends.host_array(value, transfer=True), copy=True)


def numpy_dtype(dtype):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def array(backend, x):
    """The NumPy array ``x`` as an array of ``backend`` (same dtype)."""
    if backend == "torch":
        torch = _torch()
        if str(x.dtype) == "bfloat16":
            return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.array(x))
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(x)
    return np.array(x)


def state(opt, weights):
    """Every state entry after a step: the weights, then ``opt.variables``, as NumPy."""
    return [to_numpy(w) for w in weights] + [to_numpy(v) for v in opt.variables]


# --- one run on one tier ---------------------------------------------------------------------------
#: The weights of a run: shapes, and names (``exclude="names"`` excludes the bias from decay).
SHAPES = [(3, 5), (4,), (2, 2, 2)]
NAMES = ["kernel", "bias", "gamma"]
POISONED_STEP = 3  #: with ``skip_nonfinite``, this step's first gradient holds a NaN


def weights_for(config, backend, dtype, shapes=SHAPES, seed=7):
    """Fresh weights: plain arrays (``nn.Parameter`` on torch) updated in place, or named
    Variables where names are needed (``exclude="names"``, and JAX arrays, which are immutable)."""
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=s).astype(numpy_dtype(dtype)) for s in shapes]
    names = NAMES if len(shapes) == len(NAMES) else [f"w{i}" for i in range(len(shapes))]
    if backend == "jax" or config.exclude == "names":
        return [polyak.Variable(array(backend, v), dtype=dtype, name=n) for v, n in zip(values, names)]
    if backend == "torch":
        return [_torch().nn.Parameter(array("torch", v)) for v in values]
    return values


def gradient_stream(config, backend, dtype, steps, shapes=SHAPES, seed=8):
    """Per step, gradients for the weights. Weight 1 gets none on steps 1, 1 + k, ... for
    ``none_gradient_every=k`` (so a 7-step run ends with every gradient present); with
    ``skip_nonfinite``, the first gradient of step ``POISONED_STEP`` holds a NaN."""
    rng = np.random.default_rng(seed)
    for step in range(steps):
        grads = [rng.normal(scale=2.0, size=s).astype(numpy_dtype(dtype)) for s in shapes]
        if config.options.get("skip_nonfinite") and step == POISONED_STEP:
            grads[0].flat[0] = np.nan
        grads = [array(backend, g) for g in grads]
        k = config.none_gradient_every
        if k and step % k == 1:
            grads[1] = None
        yield grads


def run_on_tier(config, backend, dtype, tier, steps=7, shapes=SHAPES):
    """``config`` stepped ``steps`` times on ``tier``: ``(state after each step, optimizer)``."""
    import warnings

    weights = weights_for(config, backend, dtype, shapes)
    opt = use_tier(config.optimizer(polyak, weights), tier)
    history = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        for grads in gradient_stream(config, backend, dtype, steps, shapes):
            opt.apply(grads, weights)
            history.append(state(opt, weights))
    return history, opt


def ulp_distance(a, b):
    """The largest distance between ``a`` and ``b`` (float arrays of one dtype and shape) in
    units in the last place: how many representable numbers lie between them (0 for equal
    numbers and for +0 and -0; a NaN must face a NaN, and counts 0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b)), "NaN in one array only"
    if nan.all():
        return 0
    bits = np.dtype(f"int{8 * a.dtype.itemsize}")
    sign = np.array(1, bits) << (8 * a.dtype.itemsize - 1)

    def ordered(x):  # the bit patterns, as integers in the order of the numbers
        i = x[~nan].view(bits).astype(np.int64) if a.dtype.itemsize < 8 else x[~nan].view(bits)
        return np.where(i < 0, -(i & ~sign), i).astype(object)

    return int(max(abs(d) for d in (ordered(a) - ordered(b)).ravel()))


#: When clipping by norm on a fused tier (norms summed in another order): (rtol, atol) per dtype.
#: Largest measured: 2.4e-7 (float32) and 4.4e-16 (float64) absolute.
NORM_TOLERANCE = {"float32": (1e-6, 1e-6), "float64": (1e-13, 1e-13)}
#: And in units in the last place, on ``SHAPES``: largest measured 768 ulps (float32,
#: features:all on NumPy and on torch; median 16 on NumPy, 64 on torch) and 128 (float64,
#: nonfinite:schedule-clipnorm on torch), on an AVX2 machine (the kernel's vector lanes set
#: the order of the sum). A large tensor has an element that crosses 0: no ulp bound there.
NORM_ULPS = {"float32": 768, "float64": 128}


def assert_same_numbers(want, got, tolerance=(0, 0), what="", ulps=None):
    """Two runs' per-step entries (``run_on_tier`` output) equal: bit for bit, or within
    ``tolerance`` (rtol, atol) and ``ulps`` when given; same dtypes and shapes either way."""
    rtol, atol = tolerance
    assert len(want) == len(got), f"{what}: {len(got)} steps, {len(want)} expected"
    for step, (a, b) in enumerate(zip(want, got)):
        assert len(a) == len(b)
        for k, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape, f"{what} step {step}: entry {k}"
            if rtol:
                np.testing.assert_allclose(y, x, rtol=rtol, atol=atol, err_msg=f"{what} step {step}: entry {k}")
                if ulps is not None and x.dtype.kind == "f":
                    distance = ulp_distance(y, x)
                    assert distance <= ulps, f"{what} step {step}: entry {k}: {distance} ulps apart (at most {ulps})"
            else:
                np.testing.assert_array_equal(y, x, err_msg=f"{what} step {step}: entry {k}")
