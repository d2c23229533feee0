"""``Optimizer``: Keras 3's optimizer contract around a pure step.

The public surface is ``keras.optimizers.Optimizer``'s. Inside, the primitive is
:func:`polyak.core.step.apply_step`, a pure function from (weights, optimizer
state, gradients) to new values. ``stateless_apply`` calls it on the values it
is given; ``apply`` validates, calls it on the current values, then writes the
results back, so an ``apply`` that raises has changed nothing.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import NamedTuple

from polyak import serialization, validation
from polyak.backends import NUMPY, backend_for
from polyak.core.state import OptimizerState, StepPlan
from polyak.core.step import apply_step
from polyak.naming import auto_name
from polyak.optimizers import fast_path
from polyak.optimizers import parameters as params_mod
from polyak.optimizers import stateless
from polyak.optimizers.gradients import check_gradients
from polyak.optimizers.persistence import StatePersistence
from polyak.optimizers.structure import flatten
from polyak.schedules import LearningRateSchedule
from polyak.variable import Variable

_INITIALIZERS = ("zeros", "ones")


class PerWeight(NamedTuple):
    """What the step reads from each built weight besides its value."""

    overwrite: tuple
    decay_mask: tuple
    constraints: tuple
    #: whether any weight has a constraint or overwrite_with_gradient
    special: bool


@serialization.base_class("optimizer")
class Optimizer(StatePersistence):
    """Base class of polyak's optimizers, with Keras 3's constructor and methods.

    A subclass names its per-weight state in ``build`` (via
    ``add_optimizer_variables``), lists it in ``_slot_variables`` and gives the
    pure update rule in ``_update_rule``; see :class:`polyak.optimizers.SGD`.

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
            step whose gradients hold any inf or NaN changes nothing, iteration
            count included, except ``skipped_steps``, which goes up by one. The
            counter is an int64 optimizer variable placed after all of Keras's
            variables, so their order and positions stay Keras's.
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, master_weights=False, skip_nonfinite=False,
                 **kwargs):
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=2)
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        self.weight_decay = validation.real("weight_decay", weight_decay, low=0, optional=True)
        self.clipnorm = validation.real("clipnorm", clipnorm, low=0, optional=True)
        self.clipvalue = validation.real("clipvalue", clipvalue, low=0, optional=True)
        self.global_clipnorm = validation.real("global_clipnorm", global_clipnorm, low=0, optional=True)
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
            )
        self.use_ema = validation.boolean("use_ema", use_ema)
        self.ema_momentum = validation.real("ema_momentum", ema_momentum, low=0, high=1)
        self.ema_overwrite_frequency = validation.integer(
            "ema_overwrite_frequency", ema_overwrite_frequency, low=1, optional=True
        )
        self.loss_scale_factor = validation.real("loss_scale_factor", loss_scale_factor, low=0, low_open=True,
                                                 optional=True)
        self.gradient_accumulation_steps = validation.integer(
            "gradient_accumulation_steps", gradient_accumulation_steps, low=2, optional=True
        )
        self.skip_nonfinite = validation.boolean("skip_nonfinite", skip_nonfinite)
        self.name = validation.string("name", name, optional=True) or auto_name(type(self).__name__)
        self.master_weights = validation.boolean("master_weights", master_weights)
        learning_rate = self._check_learning_rate(learning_rate)

        self.built = False
        self._variables = []
        self._polyak_only = 0  # how many variables at the end of ``_variables`` Keras does not have
        self._trainable_variables = []
        self._trainable_variables_indices = {}
        self._averages = []
        self._accumulators = []
        self._masters = []
        self._backend = NUMPY
        self._structure = None
        self._trainable_paths = []
        self._trainable_names = []
        self._exclude_ids = frozenset()
        self._exclude_pattern = None
        self._fused = None
        #: Run the backend's fused kernel when the step allows it (same numbers; norms may
        #: differ in the last bit). Set False to always run the reference step.
        self.fused = True
        self._per_weight_cache = (None, None)
        self._iterations = self._track(Variable(0, dtype="int64", name="iteration", trainable=False,
                                                _scope=self.name))
        if isinstance(learning_rate, (LearningRateSchedule,)) or callable(learning_rate):
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
    @staticmethod
    def _check_learning_rate(learning_rate):
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        if not validation.is_real(learning_rate):
            validation.fail(
                "learning_rate", learning_rate,
                "a float, a LearningRateSchedule, or a callable returning the rate", TypeError,
            )
        return validation.real("learning_rate", learning_rate, low=0)

    @property
    def iterations(self):
        """Completed updates: raw calls divided by ``gradient_accumulation_steps``."""
        if self.gradient_accumulation_steps:
            return self._iterations.value // self.gradient_accumulation_steps
        return self._iterations

    @property
    def skipped_steps(self):
        """With ``skip_nonfinite``: the int64 variable counting steps skipped for an
        inf/NaN gradient (calls, not updates, under accumulation). Otherwise None."""
        return self._skipped_steps

    @property
    def learning_rate(self):
        """The current rate: the rate variable, or the schedule at the raw step."""
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return lr(self._iterations.value)
        if isinstance(lr, Variable):
            return lr
        return lr()

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        learning_rate = self._check_learning_rate(learning_rate)
        previous = self._learning_rate
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            self._learning_rate = learning_rate
            if isinstance(previous, Variable):
                self._variables.remove(previous)
        elif isinstance(previous, Variable):
            previous.assign(learning_rate)
        else:
            raise TypeError(
                f"This optimizer was created with a {type(previous).__name__} as its `learning_rate`, hence "
                "its learning rate is not settable to a number. Create it with a float `learning_rate` to "
                f"set the rate later. Received: learning_rate={learning_rate!r}"
            )

    @property
    def variables(self):
        """Optimizer variables in Keras's order: iteration, learning_rate (when a
        float), EMA averages, gradient accumulators, then the rule's slots; with
        ``skip_nonfinite``, ``skipped_steps`` comes last."""
        return self._variables[:]

    # --- building --------------------------------------------------------------
    def _track(self, variable):
        """Append ``variable`` to Keras's variables, ahead of polyak's own, on the optimizer's backend."""
        variable._move_to(self._backend)
        self._variables.insert(len(self._variables) - self._polyak_only, variable)
        return variable

    def build(self, variables):
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
        self._fused = None
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

    @staticmethod
    def _is_16_bit(value):
        return str(value.dtype) in ("float16", "bfloat16", "torch.float16", "torch.bfloat16")

    def _add_master(self, reference):
        value = params_mod.value_of(reference)
        if not self._is_16_bit(value):
            return None
        bk = backend_for([value])
        path = self._trainable_paths[self._trainable_variables_indices[id(reference)]].replace("/", "_")
        return self._track(Variable(bk.cast(value, bk.float32), trainable=False, name=f"{path}_master",
                                    _scope=self.name))

    def add_variable(self, shape, initializer="zeros", dtype=None, aggregation="none", layout=None, name=None):
        """Create and track an optimizer variable (``initializer``: "zeros", "ones", an array or callable)."""
        return self._track(Variable(initializer, shape=shape, dtype=dtype or "float32", trainable=False,
                                    name=name, _scope=self.name))

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """An optimizer variable shaped like ``reference_variable``, named ``{path}_{name}``."""
        index = self._trainable_variables_indices.get(id(reference_variable))
        path = self._trainable_paths[index] if index is not None else params_mod.path_of(reference_variable,
                                                                                             "variable_0")
        path = path.replace("/", "_")
        value = params_mod.value_of(reference_variable)
        bk = backend_for([value])
        if self.master_weights and self._is_16_bit(value):
            value = bk.cast(value, bk.float32)
        if initializer in _INITIALIZERS:
            initial = bk.zeros_like(value) if initializer == "zeros" else bk.zeros_like(value) + 1
        else:
            initial = initializer
        return self._track(Variable(initial, shape=tuple(value.shape), dtype=value.dtype, trainable=False,
                                    name=f"{path}_{name or 'var'}", _scope=self.name))

    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        """One optimizer variable per weight (``None`` for ``overwrite_with_gradient`` weights).

        With a list of names, returns a tuple of lists, interleaved per weight as Keras does.
        """
        names = [name] if isinstance(name, str) else list(name)
        inits = [initializer] * len(names) if isinstance(initializer, str) or not isinstance(initializer, (list, tuple)) \
            else list(initializer)
        if len(names) != len(inits):
            raise ValueError(
                "The number of provided names must match the number of provided initializers. "
                f"Received name={name!r}, initializer={initializer!r}"
            )
        out = tuple([] for _ in names)
        for v in trainable_variables:
            for k, (slot_name, init) in enumerate(zip(names, inits)):
                skip = getattr(v, "overwrite_with_gradient", False)
                out[k].append(None if skip else self.add_variable_from_reference(v, slot_name, init))
        return out[0] if isinstance(name, str) else out

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude weights from weight decay: those in ``var_list``, and those whose
        name contains any string of ``var_names`` (a regex search). Call before ``build``."""
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        self._exclude_ids = frozenset(id(v) for v in (var_list or ()))
        names = list(var_names or ())
        for n in names:
            validation.string("var_names", n)
        self._exclude_pattern = re.compile("|".join(sorted(set(names)))) if names else None

    def _use_weight_decay(self, variable):
        if id(variable) in self._exclude_ids:
            return False
        index = self._trainable_variables_indices.get(id(variable))
        name = self._trainable_names[index] if index is not None else params_mod.name_of(variable, "variable_0")
        return self._exclude_pattern is None or self._exclude_pattern.search(name) is None

    def _get_variable_index(self, variable):
        return self._trainable_variables_indices[id(variable)]

    # --- the step ---------------------------------------------------------------
    def _slot_variables(self):
        """The update rule's per-weight optimizer variables: a tuple of lists."""
        return ()

    def _update_rule(self, bk, grads, params, slots, learning_rate):
        """Pure update on lists: returns ``(new_params, new_slots)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_update_rule`.")

    def _learning_rate_function(self):
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return lambda iteration, stored: lr(iteration)
        if isinstance(lr, Variable):
            return lambda iteration, stored: stored
        return lambda iteration, stored: lr()

    def _fused_hyperparameters(self):
        """Arguments of the backend's fused kernel for this rule, or None if it has none."""
        return None

    def _per_weight(self) -> PerWeight:
        """Overwrite flags, decay mask and constraints of the built weights (cached until a
        Variable's settings change)."""
        version, cached = self._per_weight_cache
        if cached is None or version != Variable._settings_version:
            built = self._trainable_variables
            overwrite = tuple(getattr(v, "overwrite_with_gradient", False) for v in built)
            constraints = tuple(getattr(v, "constraint", None) for v in built)
            cached = PerWeight(
                overwrite=overwrite,
                decay_mask=tuple(self._use_weight_decay(v) for v in built),
                constraints=constraints,
                special=any(overwrite) or any(c is not None for c in constraints),
            )
            self._per_weight_cache = (Variable._settings_version, cached)
        return cached

    def _plan(self):
        per_weight = self._per_weight()
        return StepPlan(
            rule=self._update_rule,
            learning_rate=self._learning_rate_function(),
            overwrite=per_weight.overwrite,
            decay_mask=per_weight.decay_mask,
            constraints=per_weight.constraints,
            weight_decay=self.weight_decay,
            clipnorm=self.clipnorm,
            clipvalue=self.clipvalue,
            global_clipnorm=self.global_clipnorm,
            use_ema=self.use_ema,
            ema_momentum=self.ema_momentum,
            ema_overwrite_frequency=self.ema_overwrite_frequency,
            loss_scale_factor=self.loss_scale_factor,
            accumulation_steps=self.gradient_accumulation_steps,
            skip_nonfinite=self.skip_nonfinite,
        )

    def _state_from(self, values) -> OptimizerState:
        position = {id(v): k for k, v in enumerate(self._variables)}

        def pick(variables):
            return tuple(None if v is None else values[position[id(v)]] for v in variables)

        lr = self._learning_rate
        return OptimizerState(
            iteration=values[position[id(self._iterations)]],
            learning_rate=values[position[id(lr)]] if isinstance(lr, Variable) else None,
            averages=pick(self._averages),
            accumulators=pick(self._accumulators),
            slots=tuple(pick(slot) for slot in self._slot_variables()),
            masters=pick(self._masters),
            skipped=None if self._skipped_steps is None else values[position[id(self._skipped_steps)]],
        )

    def _values_from(self, state: OptimizerState, values) -> list:
        position = {id(v): k for k, v in enumerate(self._variables)}
        values = list(values)

        def put(variables, new):
            for v, x in zip(variables, new):
                if v is not None:
                    values[position[id(v)]] = x

        put([self._iterations], [state.iteration])
        if self._skipped_steps is not None:
            put([self._skipped_steps], [state.skipped])
        put(self._averages, state.averages)
        put(self._accumulators, state.accumulators)
        put(self._masters, state.masters)
        for slot, new in zip(self._slot_variables(), state.slots):
            put(slot, new)
        return values

    def _step(self, param_values, optimizer_values, grads):
        state = self._state_from(optimizer_values)
        with self._backend.step_context():
            new_params, new_state = apply_step(self._plan(), self._backend, param_values, state, grads)
        return new_params, self._values_from(new_state, optimizer_values)

    # --- applying gradients -------------------------------------------------------
    def apply_gradients(self, grads_and_vars):
        """``apply`` on ``(gradient, variable)`` pairs; returns the iteration variable."""
        pairs = list(grads_and_vars)
        if not pairs:
            return self._iterations
        grads, variables = zip(*pairs)
        self.apply(list(grads), list(variables))
        return self._iterations

    def apply(self, grads, trainable_variables=None):
        """Update the weights from their gradients.

        ``trainable_variables`` builds the optimizer on the first call; later
        calls may pass any subset of the weights it was built on, or omit them
        to mean all of them. NumPy arrays and torch tensors are updated in place
        (torch under ``no_grad``); Variables are assigned (a Variable holding a
        JAX array gets a new array). A plain JAX array cannot be updated: use
        ``stateless_apply`` or a Variable. Raises before writing anything if
        the input is bad.
        """
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
                self._check_variables_are_known(variables)
            if fast_path.try_apply(self, variables, grads):
                return
            indices = [known[id(v)] for v in variables]
            bk, paths = self._backend, [self._trainable_paths[i] for i in indices]
        else:
            indices = range(len(variables))
            params_mod.check_parameters(variables, structure.paths)
            bk = backend_for([params_mod.value_of(v) for v in variables])
            paths = [params_mod.path_of(v, d) for v, d in zip(variables, structure.paths)]
        params_mod.check_writable(bk, variables, paths)
        grads = check_gradients(bk, grads, [params_mod.value_of(v) for v in variables], paths)
        if not self.built:
            self.build(structure.rebuild(variables))
            if fast_path.try_apply(self, self._trainable_variables, grads):
                return
        full = [None] * len(self._trainable_variables)
        for i, g in zip(indices, grads):
            full[i] = g
        old_params = [params_mod.value_of(v) for v in self._trainable_variables]
        old_values = [v.value for v in self._variables]
        new_params, new_values = self._step(old_params, old_values, full)
        for variable, old, new in zip(self._trainable_variables, old_params, new_params):
            if new is not old:
                params_mod.write(variable, new, bk)
        for variable, old, new in zip(self._variables, old_values, new_values):
            if new is not old:
                variable.assign(new)

    def _are_the_built_weights(self, variables):
        """Whether ``variables`` is the flat list the optimizer was built on (the common call)."""
        built = self._trainable_variables
        return (self.built and self._structure.treedef is None and isinstance(variables, (list, tuple))
                and len(variables) == len(built) and all(a is b for a, b in zip(variables, built)))

    def _check_variables_are_known(self, variables):
        for v in variables:
            if id(v) not in self._trainable_variables_indices:
                raise ValueError(
                    f"Unknown variable: {v!r}. This optimizer can only be called for the variables it was "
                    "originally built with. When working with a new set of variables, you should recreate a "
                    "new optimizer instance."
                )

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
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
        stateless.check_built(self)
        optimizer_variables = list(optimizer_variables)
        trainable_variables = self._structure.leaves(trainable_variables, "trainable_variables")
        grads = self._structure.leaves(grads, "grads")
        stateless.check_counts(self, optimizer_variables, trainable_variables)
        values, params = stateless.converted(self, optimizer_variables, trainable_variables)
        grads = check_gradients(self._backend, grads, params, self._trainable_paths)
        new_params, new_values = self._step(params, values, grads)
        return self._structure.rebuild(new_params), new_values

    # --- Keras's per-variable primitives ------------------------------------------------
    def assign(self, variable, value):
        """Set ``variable`` (a Variable or a plain array) to ``value``."""
        params_mod.write(variable, value, self._backend)

    def assign_add(self, variable, value):
        params_mod.write(variable, params_mod.value_of(variable) + value, self._backend)

    def assign_sub(self, variable, value):
        params_mod.write(variable, params_mod.value_of(variable) - value, self._backend)

    def update_step(self, gradient, variable, learning_rate):
        """Apply the update rule alone (no clipping, decay or EMA) to one built weight."""
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

    def scale_loss(self, loss):
        """``loss * loss_scale_factor`` (the loss itself when no factor is set)."""
        return loss if self.loss_scale_factor is None else loss * self.loss_scale_factor

    def finalize_variable_values(self, var_list):
        """With EMA, set the weights in ``var_list`` to their moving averages."""
        if not self.use_ema:
            return
        var_list = self._checked_ema_targets(var_list)
        for variable, average in zip(var_list, self._averages):
            if average is not None:
                params_mod.write(variable, average.value, self._backend)

    def _checked_ema_targets(self, var_list):
        var_list = list(var_list)
        if len(var_list) != len(self._averages):
            raise ValueError(
                f"The length of model variables ({len(var_list)}) to override does not match the length of "
                f"model variables stored in the optimizer ({len(self._averages)}). Please check if the "
                "optimizer was called on your model."
            )
        return var_list

    @contextlib.contextmanager
    def ema_weights(self, var_list=None):
        """Inside the block the weights hold their moving averages; on leaving it,
        also by an exception, they hold their raw values again, bit for bit.

        ``var_list`` defaults to the weights the optimizer was built on. Before
        the first update the averages are zeros, as in Keras. Not in Keras,
        which only has the one-way ``finalize_variable_values``.

        Example::

            >>> import numpy as np, polyak
            >>> w = np.array([1.0])
            >>> opt = polyak.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
            >>> opt.apply([np.array([1.0])], [w])   # w = 0, average = 0 (a copy on the first update)
            >>> opt.apply([np.array([1.0])], [w])   # w = -1, average = 0.5 * 0 + 0.5 * -1
            >>> with opt.ema_weights():
            ...     print(w)
            [-0.5]
            >>> w
            array([-1.])
        """
        if not self.use_ema:
            raise ValueError(
                "`ema_weights()` needs an optimizer that keeps moving averages. "
                f"Received: use_ema={self.use_ema}"
            )
        if not self.built:
            raise ValueError(
                "`ema_weights()` needs a built optimizer: call `optimizer.build(trainable_variables)` or "
                "`apply` first."
            )
        var_list = self._checked_ema_targets(self._trainable_variables if var_list is None else var_list)
        params_mod.check_parameters(var_list)
        for i, (variable, average) in enumerate(zip(var_list, self._averages)):
            shape = tuple(params_mod.value_of(variable).shape)
            if average is not None and shape != average.shape:
                raise ValueError(
                    f"`var_list[{i}]` must have the shape {average.shape} of its average {average.path!r}. "
                    f"Received: shape {shape}"
                )
        raw = [self._backend.copy(params_mod.value_of(v)) for v in var_list]
        try:
            for variable, average in zip(var_list, self._averages):
                if average is not None:
                    params_mod.write(variable, average.value, self._backend)
            yield
        finally:
            for variable, value in zip(var_list, raw):
                params_mod.write(variable, value, self._backend)
