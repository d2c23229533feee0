"""``Optimizer``: Keras 3's optimizer contract around a pure step.

The public surface is ``keras.optimizers.Optimizer``'s. Inside, the primitive is
:func:`polyak.core.step.apply_step`, a pure function from (weights, optimizer
state, gradients) to new values. ``stateless_apply`` calls it on the values it
is given; ``apply`` validates everything, then hands the step to the tier that
:func:`polyak.tiers.select` picks, so an ``apply`` that raises has changed nothing.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

from polyak import arguments, options, rates, serialization, tiers
from polyak.backends import NUMPY, backend_for
from polyak.annotations import Array, LearningRateLike, Weights
from polyak.core.state import LOCAL_SQUARES, StepPlan
from polyak.core.step import apply_step
from polyak.naming import auto_name
from polyak.optimizers import parameters as params_mod
from polyak.optimizers import custom_rules, stateless_checks
from polyak.optimizers.ema_weights import EmaWeights
from polyak.optimizers.learning_rate import LearningRate
from polyak.optimizers.gradients import check_gradients
from polyak.optimizers.iteration_count import CountVariable
from polyak.optimizers.persistence import StatePersistence
from polyak.optimizers.pickling import Picklable
from polyak.optimizers.state_roles import ACCUMULATOR, AVERAGE, MASTER, StateRoles
from polyak.optimizers.structure import flatten
from polyak.optimizers.variable_factory import VariableFactory
from polyak.variable import Variable


class PerWeight(NamedTuple):
    """What the step reads from each built weight besides its value."""

    overwrite: tuple
    decay_mask: tuple
    constraints: tuple


@serialization.base_class("optimizer")
class Optimizer(Picklable, custom_rules.KerasPrimitives, LearningRate, VariableFactory, EmaWeights,
                StatePersistence):
    """Base class of polyak's optimizers, with Keras 3's constructor and methods.

    A subclass names its per-weight state in ``build`` (via
    ``add_optimizer_variables``), lists it in ``_slot_variables`` and gives the
    pure update rule in ``_update_rule``; see :class:`polyak.optimizers.SGD`.
    Or, as Keras's guides do, it makes its variables in ``build`` and updates one
    weight in ``update_step`` with ``self.assign``: see
    :mod:`polyak.optimizers.custom_rules` for how that runs in the pure step.

    Args:
        learning_rate: a float, a ``LearningRateSchedule``, or a zero-argument
            callable returning the rate.
        weight_decay: decoupled weight decay ``w <- w - w * weight_decay * lr``.
        clipnorm: clip each gradient to this L2 norm.
        clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip all gradients together to this global L2 norm.
        use_ema: keep an exponential moving average of the weights.
        ema_momentum: ``avg <- ema_momentum * avg + (1 - ema_momentum) * w``.
        ema_overwrite_frequency: overwrite the weights by their average every
            this many updates (None: only by ``finalize_variable_values``).
        loss_scale_factor: ``scale_loss`` multiplies by it, ``apply`` divides
            the gradients by it.
        gradient_accumulation_steps: update every N calls with the mean gradient.
        name: the optimizer's name, prefix of its variables' paths.
        master_weights: (polyak only, off by default) keep a float32 master copy of
            every float16/bfloat16 weight and float32 state for it; the step runs
            on the master and the weight is the master rounded to its dtype, so
            updates smaller than the weight's precision still accumulate. No
            effect on float32/float64 weights. The master copies are optimizer
            variables named ``{path}_master``, after the others.
        skip_nonfinite: not a Keras option, off by default (Keras lets an
            inf/NaN gradient poison the weights and every slot). When True, a
            step for which any value computed from the gradients holds an inf
            or NaN (the gradients after the loss scale and accumulation, the
            accumulated sum, clipping's norms, which overflow in float32 for
            finite gradients of about 2e19: ``polyak.core.nonfinite``) changes
            nothing, iteration count included, except ``skipped_steps``, which
            goes up by one (saturating as the iteration count does). The
            counter is an int64 optimizer variable placed after all of Keras's
            variables, so their order and positions stay Keras's.

    ``fused`` (True by default; polyak only) lets ``apply`` run a fused tier when one
    can take the step (one kernel over flat state; the same numbers, norms to the last
    bit); set it to False to always run the reference step.
    """

    def __init__(self, learning_rate: LearningRateLike, weight_decay: float | None = None,
                 clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None,
                 use_ema: bool = False, ema_momentum: float = 0.99, ema_overwrite_frequency: int | None = None,
                 loss_scale_factor: float | None = None, gradient_accumulation_steps: int | None = None,
                 name: str | None = None, *, master_weights: bool = False, skip_nonfinite: bool = False,
                 **kwargs: Any) -> None:
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=2)
        if kwargs:
            raise arguments.not_recognized(arguments.face_name(type(self)), kwargs,
                                           arguments.accepted_keywords(type(self), Optimizer))
        given = dict(weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                     global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
                     ema_overwrite_frequency=ema_overwrite_frequency, loss_scale_factor=loss_scale_factor,
                     gradient_accumulation_steps=gradient_accumulation_steps, master_weights=master_weights,
                     skip_nonfinite=skip_nonfinite)
        values = options.checked(options.BASE, given)
        options.check_one_clipping(given)
        self.name = options.NAME.check("name", name) or auto_name(type(self).__name__)
        learning_rate = options.LEARNING_RATE.check("learning_rate", learning_rate)
        self.__dict__.update(values)

        self.built = False
        self._variables = []
        self._polyak_only = 0  # how many variables at the end of ``_variables`` Keras does not have
        self._trainable_variables = []
        self._trainable_variables_indices = {}
        self._weight_variables = []  # the built weights that are Variables (whose settings can change)
        self._averages = []
        self._accumulators = []
        self._masters = []
        self._backend = NUMPY
        self._structure = None
        self._trainable_paths = []
        self._trainable_names = []
        self._exclude_ids = frozenset()
        self._exclude_pattern = None
        self.fused = True
        self._tier_cache = None  # what a fused tier prepared for the built weights (see polyak.tiers)
        self._last_tier = None  # the name of the tier that ran the last ``apply``
        self._apply_lock = threading.RLock()  # serialises ``apply`` across threads
        self._writable_checked = False  # the built weights passed ``check_writable``
        self._per_weight_cache = (None, None)
        #: how clipping sums squares into norms (``ShardedOptimizer``: over the ranks)
        self._norm_squares = LOCAL_SQUARES
        self._iterations = self._track(CountVariable(0, dtype="int64", name="iteration", trainable=False,
                                                _scope=self.name))
        if rates.varies(learning_rate):
            self._learning_rate = learning_rate
        else:
            self._learning_rate = self._track(Variable(learning_rate, dtype="float32", name="learning_rate",
                                                       trainable=False, _scope=self.name))
        self._skipped_steps = None
        if self.skip_nonfinite:
            self._skipped_steps = self._track(Variable(0, dtype="int64", name="skipped_steps", trainable=False,
                                                       _scope=self.name))
            self._polyak_only = 1

    # --- learning rate and counters ------------------------------------------
    @property
    def iterations(self) -> Variable | Array:
        """Completed updates: raw calls divided by ``gradient_accumulation_steps``."""
        if self.gradient_accumulation_steps:
            return self._iterations.value // self.gradient_accumulation_steps
        return self._iterations

    @property
    def skipped_steps(self) -> Variable | None:
        """With ``skip_nonfinite``: the int64 variable counting steps skipped for an
        inf/NaN gradient (calls, not updates, under accumulation). Otherwise None."""
        return self._skipped_steps

    @property
    def variables(self) -> list[Variable]:
        """Optimizer variables in Keras's order: iteration, learning_rate (when a
        float), EMA averages, gradient accumulators, then the rule's slots; with
        ``skip_nonfinite``, ``skipped_steps`` comes last."""
        return self._variables[:]

    @property
    def state_roles(self) -> StateRoles:
        """The optimizer variables grouped by role, and the weights' paths."""
        slots = tuple(zip(self._slot_names(), self._slot_variables()))
        per_weight = ((AVERAGE, self._averages), (ACCUMULATOR, self._accumulators), *slots,
                      (MASTER, self._masters))
        lr = self._learning_rate
        return StateRoles(iteration=self._iterations, learning_rate=lr if isinstance(lr, Variable) else None,
                          skipped=self._skipped_steps, per_weight=tuple((r, v) for r, v in per_weight if v),
                          weight_paths=tuple(self._trainable_paths))

    # --- building --------------------------------------------------------------
    def build(self, variables: Weights) -> None:
        """Create the optimizer variables for ``variables``: EMA averages, gradient
        accumulators, the rule's slots (``_build_slots``), then polyak's own (master copies).

        ``variables`` is a list of weights (``polyak.Variable`` objects, NumPy arrays,
        torch tensors or JAX arrays, all of one kind and on one device), or with
        JAX arrays any pytree of them. The backend is chosen from their kind;
        the optimizer's variables are created on it, in each weight's dtype.
        """
        if self.built:
            return
        variables, structure = flatten(variables)
        params_mod.check_parameters(variables, structure.paths)
        bk = backend_for([params_mod.value_of(v) for v in variables])
        self._backend = bk
        self._structure = structure
        self._trainable_variables = variables
        self._trainable_paths = [params_mod.path_of(v, d) for v, d in zip(variables, structure.paths)]
        self._trainable_names = [params_mod.name_of(v, d) for v, d in zip(variables, structure.paths)]
        self._trainable_variables_indices = {id(v): i for i, v in enumerate(variables)}
        self._weight_variables = [v for v in variables if isinstance(v, Variable)]
        self._tier_cache = None
        self._writable_checked = False
        self._per_weight_cache = (None, None)
        for v in self._variables:
            v._move_to(bk, bk.counter_dtype if v is self._iterations else None)
        if self.use_ema:
            self._averages = self.add_optimizer_variables(variables, "average")
        if self.gradient_accumulation_steps:
            self._accumulators = [self.add_variable_from_reference(v, "gradient_accumulator") for v in variables]
        self._build_slots(variables)
        if self.master_weights:
            self._masters = [self._add_master(v) for v in variables]
        self.built = True

    def _build_slots(self, variables):
        """Create the update rule's per-weight variables (a subclass hook)."""

    # --- the step ---------------------------------------------------------------
    def _slot_variables(self):
        """The update rule's per-weight optimizer variables: a tuple of lists."""
        return ()

    def _slot_names(self):
        """The role name of each of ``_slot_variables`` (checkpoint keys, flat buffers)."""
        return ()

    def _update_rule(self, bk, grads, params, slots, learning_rate):
        """Pure update on lists: returns ``(new_params, new_slots)``. A rule object with
        ``kernel_lines`` (see :class:`polyak.core.momentum.MomentumRule`) can also be fused."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `update_step` (as in Keras) or the pure `_update_rule`.")

    def _per_weight(self) -> PerWeight:
        """Overwrite flags, decay mask and constraints of the built weights, cached until a
        built Variable's ``constraint`` or ``overwrite_with_gradient`` changes."""
        built = self._trainable_variables
        version = tuple(v._settings_version for v in self._weight_variables)
        cached_version, cached = self._per_weight_cache
        if cached is None or version != cached_version:
            cached = PerWeight(
                overwrite=tuple(getattr(v, "overwrite_with_gradient", False) for v in built),
                decay_mask=tuple(self._use_weight_decay(v) for v in built),
                constraints=tuple(getattr(v, "constraint", None) for v in built),
            )
            self._per_weight_cache = (version, cached)
        return cached

    def _plan(self) -> StepPlan:
        per_weight = self._per_weight()
        return StepPlan(
            rule=custom_rules.UpdateStepRule(self) if custom_rules.keras_style(self) else self._update_rule,
            learning_rate=self._learning_rate_function(),
            overwrite=per_weight.overwrite,
            decay_mask=per_weight.decay_mask,
            constraints=per_weight.constraints,
            squares=self._norm_squares,
            **{o.name: getattr(self, o.name) for o in options.STEP},
        )

    def _step(self, param_values, optimizer_values, grads, host_iteration=None):
        """The pure step on values: ``(new weight values, new optimizer values)``, aligned with
        the built weights and ``variables``. Wrappers (``LossScaleOptimizer``) guard it.
        ``host_iteration``: ``apply``'s host copy of the count (``iteration_count``), if known."""
        if custom_rules.keras_style(self):
            return custom_rules.step(self, param_values, optimizer_values, grads)
        roles = self.state_roles
        state = roles.state_from(self._variables, optimizer_values)
        with self._backend.step_context():
            new_params, new_state = apply_step(self._plan(), self._backend, param_values, state, grads, host_iteration)
        return new_params, roles.values_from(self._variables, new_state, optimizer_values)

    def _counts_every_call(self) -> bool:
        """Whether every ``apply`` counts, whatever the gradients (not with ``skip_nonfinite``)."""
        return not self.skip_nonfinite

    # --- applying gradients -------------------------------------------------------
    def apply_gradients(self, grads_and_vars: Iterable[tuple[Array, Any]]) -> Variable:
        """``apply`` on ``(gradient, variable)`` pairs; returns the iteration variable."""
        pairs = list(grads_and_vars)
        if not pairs:
            return self._iterations
        grads, variables = zip(*pairs)
        self.apply(list(grads), list(variables))
        return self._iterations

    def apply(self, grads: Weights, trainable_variables: Weights | None = None) -> None:
        """Update the weights from their gradients.

        ``trainable_variables`` builds the optimizer on the first call; later
        calls may pass any subset of the weights it was built on, or omit them
        to mean all of them. NumPy arrays and torch tensors are updated in place
        (torch under ``no_grad``); Variables are assigned (a Variable holding a
        JAX array gets a new array). A plain JAX array cannot be updated: use
        ``stateless_apply`` or a Variable. Every input is checked before
        anything is written. Calls from several threads on one optimizer are
        serialised: each runs whole, in turn, none is lost.
        """
        with self._apply_lock:
            self._apply(grads, trainable_variables)

    def _apply(self, grads, trainable_variables):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be built on a list "
                    "of variables. Call `optimizer.build(trainable_variables)` first."
                )
            variables, structure = self._trainable_variables, self._structure
        elif self._are_the_built_weights(trainable_variables):
            variables, structure = self._trainable_variables, self._structure
        else:
            variables, structure = flatten(trainable_variables)
        grads = structure.leaves(grads, "grads")
        if not grads:
            return
        known = self._trainable_variables_indices
        if self.built:
            if variables is not self._trainable_variables and any(id(v) not in known for v in variables):
                params_mod.check_parameters(variables, structure.paths)
                params_mod.check_known(variables, known)
            if variables is self._trainable_variables:
                indices, paths = range(len(variables)), self._trainable_paths
            else:
                indices = [known[id(v)] for v in variables]
                paths = [self._trainable_paths[i] for i in indices]
            bk = self._backend
        else:
            indices = range(len(variables))
            params_mod.check_parameters(variables, structure.paths)
            bk = backend_for([params_mod.value_of(v) for v in variables])
            paths = [params_mod.path_of(v, d) for v, d in zip(variables, structure.paths)]
        self._check_writable(bk, variables, paths)
        proof = tiers.exact_gradients(self._stepped(), variables, grads) if self.built else None
        if proof is None:
            grads = check_gradients(bk, grads, [params_mod.value_of(v) for v in variables], paths)
        if not self.built:
            self.build(structure.rebuild(variables))
        self._last_tier = self._run_tier(variables, indices, grads, proof)

    def _stepped(self):
        """The optimizer whose state a fused tier steps: this one (a wrapper names the one inside)."""
        return self

    def _run_tier(self, variables, indices, grads, proof):
        """Run the validated step on the tier ``tiers.select`` picks; returns the tier's name."""
        plan = self._plan()
        return tiers.select(self, plan, variables, grads, proof).run(self, plan, indices, grads, proof)

    def _check_writable(self, bk, variables, paths):
        """``check_writable``, once for the built weights (until they are rebuilt)."""
        if variables is self._trainable_variables and self._writable_checked:
            return
        params_mod.check_writable(bk, variables, paths)
        if variables is self._trainable_variables:
            self._writable_checked = True

    def _are_the_built_weights(self, variables):
        """Whether ``variables`` is the flat list the optimizer was built on (the common call)."""
        return (self.built and self._structure.treedef is None and isinstance(variables, (list, tuple))
                and params_mod.are_the_built(variables, self._trainable_variables))

    def stateless_apply(self, optimizer_variables: Sequence[Array], grads: Weights,
                        trainable_variables: Weights) -> tuple[Weights, list[Array]]:
        """``apply`` as a pure function of values: traces under ``jax.jit``.

        Args:
            optimizer_variables: values of ``self.variables``, in order.
            grads: gradients aligned with the weights the optimizer was built on
                (a list, or a pytree of the structure it was built on).
            trainable_variables: values of those weights, arranged the same way.

        Returns:
            ``(new_trainable_values, new_optimizer_values)``, the former arranged
            like ``trainable_variables``; nothing is modified.

        Under ``jax.jit`` with donation, donate the weights and then the optimizer
        values, in the order they are returned (wrap the call so they come first):
        JAX pairs donated buffers with outputs in order.
        """
        stateless_checks.check_built(self)
        optimizer_variables = list(optimizer_variables)
        trainable_variables = self._structure.leaves(trainable_variables, "trainable_variables")
        grads = self._structure.leaves(grads, "grads")
        stateless_checks.check_counts(self, optimizer_variables, trainable_variables)
        values, params = stateless_checks.converted(self, optimizer_variables, trainable_variables)
        grads = check_gradients(self._backend, grads, params, self._trainable_paths)
        new_params, new_values = self._step(params, values, grads)
        return self._structure.rebuild(new_params), new_values

    # --- Keras's per-variable primitives (``assign``, ``assign_add``, ``assign_sub``: custom_rules) ---
    def update_step(self, gradient: Array, variable: Any, learning_rate: Array) -> None:
        """Apply the update rule alone (no clipping, decay or EMA) to one built weight.
        A subclass may override it instead of ``_update_rule``, as in Keras (``custom_rules``)."""
        i = self._get_variable_index(variable)
        bk = self._backend
        slots = tuple([slot[i].value] for slot in self._slot_variables())
        with bk.step_context():
            (new,), new_slots = self._update_rule(
                bk, [bk.asarray(gradient)], [params_mod.value_of(variable)], slots, learning_rate
            )
        self.assign(variable, new)
        for slot, (value,) in zip(self._slot_variables(), new_slots):
            slot[i].assign(value)

    def scale_loss(self, loss: Array) -> Array:
        """``loss * loss_scale_factor`` (the loss itself when no factor is set)."""
        return loss if self.loss_scale_factor is None else loss * self.loss_scale_factor
