"""The data a step reads and writes: the optimizer's state and its fixed plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence


class OptimizerState(NamedTuple):
    """Optimizer-variable values, grouped by role. Per-weight tuples hold ``None``
    where a weight has no such slot (``overwrite_with_gradient`` weights)."""

    iteration: Any  #: raw call count, int64
    learning_rate: Any  #: float32 scalar, or None when the rate is a schedule or callable
    averages: tuple  #: EMA of each weight, or empty without EMA
    accumulators: tuple  #: summed gradients, or empty without accumulation
    slots: tuple  #: the update rule's per-weight tensors, one tuple per slot kind
    masters: tuple = ()  #: float32 master copy of each 16-bit weight (None for others), or empty
    skipped: Any = None  #: steps skipped for non-finite gradients, int64; None unless ``skip_nonfinite``


#: ``rule(bk, grads, params, slots, learning_rate) -> (params, slots)`` on lists. A rule that
#: a fused kernel can run also has ``kernel_lines()`` and ``kernel_scalars(dtype_cast)``
#: (see :class:`polyak.core.momentum.MomentumRule`).
UpdateRule = Callable[[Any, list, list, tuple, Any], tuple]


class LocalSquares:
    """How per-tensor sums of squares become the norms clipping divides by: on one
    process, as they are. :class:`polyak.distributed.ShardedOptimizer` supplies one that
    sums them over the ranks holding pieces of the same tensors."""

    def per_tensor(self, xp, squares):
        """Each tensor's full sum of squares, from the list of this process's sums."""
        return squares

    def total(self, xp, squares):
        """The sum over every tensor (summed per tensor first, as Keras does)."""
        return xp.sum(xp.stack(squares))

    def agree(self, xp, finite):
        """A guarded step's flag as every process of the step agrees on it: on one process, as it is."""
        return finite


LOCAL_SQUARES = LocalSquares()


@dataclass(frozen=True)
class GroupPlan:
    """One group of weights with its own hyperparameters (the torch face's param groups).

    Clipping, the counter and every stage outside the descent stay global; inside the
    descent, the group's weights decay by its ``weight_decay`` (None: no decay) at its rate
    and take its ``rule``. A rule that keeps no slots (``slot_names`` empty) leaves the
    group's slots as they are.
    """

    learning_rate: Callable[[Any, Any], Any]  #: ``learning_rate(raw_iteration, stored_rate) -> scalar``
    rule: UpdateRule
    weight_decay: Optional[float] = None


@dataclass(frozen=True)
class StepPlan:
    """Everything fixed about a step once the optimizer is built.

    The hyperparameter fields are named as the optimizer's arguments are
    (``polyak.options.STEP``), and copied from it.
    """

    rule: UpdateRule
    #: ``learning_rate(raw_iteration, stored_rate) -> scalar``
    learning_rate: Callable[[Any, Any], Any]
    overwrite: Sequence[bool]  #: per weight: set to its gradient instead of descending
    decay_mask: Sequence[bool]  #: per weight: subject to weight decay
    constraints: Sequence[Optional[Callable]]
    weight_decay: Optional[float] = None
    clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    global_clipnorm: Optional[float] = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: Optional[int] = None
    loss_scale_factor: Optional[float] = None
    gradient_accumulation_steps: Optional[int] = None
    #: a step with any inf/NaN value that ``guard`` looks at changes nothing but ``skipped``
    skip_nonfinite: bool = False
    #: with ``skip_nonfinite``, what the guard looks at (``polyak.core.nonfinite``): "computed",
    #: every value the step computes from the gradients (the option), or "given", the gradients
    #: as given (a ``LossScaleOptimizer``'s guard, as Keras's)
    guard: str = "computed"
    squares: LocalSquares = LOCAL_SQUARES  #: how norms for clipping are summed
    #: per-group hyperparameters of the descent, or None: one group, the fields above
    groups: Optional[Sequence[GroupPlan]] = None
    group_of: Sequence[int] = ()  #: with ``groups``: per weight, the index of its group
