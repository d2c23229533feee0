"""``Variable``: a named, assignable array, as Keras's ``keras.Variable`` is."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from polyak import validation
from polyak.annotations import Array
from polyak.backends import backend_for, dtype_name
from polyak.naming import auto_name

_INITIALIZERS = {"zeros": np.zeros, "ones": np.ones}


def _standard_dtype(backend, dtype):
    """Keras's default dtypes: floats become float32 and integers int32 unless told."""
    kind = backend.kind(dtype)
    if kind == "f":
        return backend.dtype("float32")
    if kind in "iu":
        return backend.dtype("int32")
    return dtype


class Variable:
    """A named array that the optimizer reads and assigns.

    Args:
        initializer: an array, a number, ``"zeros"``/``"ones"`` (with ``shape``),
            or a callable ``initializer(shape, dtype)``.
        shape: the shape; needed when ``initializer`` is a string or callable.
        dtype: the dtype; by default float32 for floating input, as in Keras.
        trainable: whether the variable is trained.
        name: a name without ``/``; one is made up when omitted.

    ``constraint`` (a callable applied to the value after each optimizer update)
    and ``overwrite_with_gradient`` (the optimizer sets the value to the gradient
    instead of descending) can be set after construction.
    """

    #: Bumped whenever any variable's ``constraint`` or ``overwrite_with_gradient``
    #: changes, so optimizers can cache what they read from them.
    _settings_version = 0

    def __init__(self, initializer: Any, shape: Sequence[int] | None = None, dtype: Any = None,
                 trainable: bool = True, name: str | None = None, *, _scope: str | None = None) -> None:
        name = name if name is not None else auto_name("Variable")
        if not isinstance(name, str) or "/" in name:
            validation.fail("name", name, "a string without '/'")
        if isinstance(initializer, str):
            if initializer not in _INITIALIZERS:
                validation.fail("initializer", initializer, f"an array, a callable or one of {sorted(_INITIALIZERS)}")
            if shape is None:
                validation.fail("shape", shape, f"given with initializer={initializer!r}")
            value = _INITIALIZERS[initializer](shape, dtype=np.dtype(dtype_name(dtype or "float32")))
        elif callable(initializer):
            if shape is None:
                validation.fail("shape", shape, "given with a callable initializer")
            value = initializer(tuple(shape), np.dtype(dtype_name(dtype or "float32")))
        else:
            value = initializer
        backend = backend_for([value])
        value = backend.asarray(value)
        value = backend.cast(value, _standard_dtype(backend, value.dtype) if dtype is None else backend.dtype(dtype))
        if shape is not None and tuple(value.shape) != tuple(shape):
            validation.fail("shape", shape, f"the initializer's shape {tuple(value.shape)}")
        self._backend = backend
        self._value = backend.copy(value)
        self._name = name
        self._path = f"{_scope}/{name}" if _scope else name
        self._trainable = bool(trainable)
        #: bumped whenever ``constraint`` or ``overwrite_with_gradient`` changes, so an
        #: optimizer can cache what it reads from them
        self._settings_version = 0
        self.constraint = None
        self.overwrite_with_gradient = False

    # --- reading -------------------------------------------------------------
    @property
    def value(self) -> Array:
        return self._value

    def numpy(self) -> np.ndarray:
        return np.array(self._backend.to_numpy(self._value))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    @property
    def dtype(self) -> str:
        return dtype_name(self._value.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        return self._path

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)

    @property
    def constraint(self) -> Callable[[Array], Array] | None:
        return self._constraint

    @constraint.setter
    def constraint(self, value: Callable[[Array], Array] | None) -> None:
        if value is not None and not callable(value):
            validation.fail("constraint", value, "a callable or None", TypeError)
        self._constraint = value
        self._settings_version += 1

    @property
    def overwrite_with_gradient(self) -> bool:
        return self._overwrite_with_gradient

    @overwrite_with_gradient.setter
    def overwrite_with_gradient(self, value: bool) -> None:
        self._overwrite_with_gradient = validation.boolean("overwrite_with_gradient", value)
        self._settings_version += 1

    # --- writing -------------------------------------------------------------
    def _move_to(self, backend, dtype=None):
        """Re-create the value as an array of ``backend`` (an optimizer's, once it is built)."""
        if backend is self._backend and dtype is None:
            return
        value = self._backend.to_numpy(self._value)
        self._value = backend.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self._backend = backend

    def assign(self, value: Any) -> Array:
        """Set the value (cast to this variable's dtype; the shape must match)."""
        value = self._backend.cast(self._backend.asarray(value), self._value.dtype)
        if tuple(value.shape) != self.shape:
            raise ValueError(
                f"The shape of the value assigned to variable '{self.path}' must match its "
                f"shape {self.shape}. Received: value.shape={tuple(value.shape)}"
            )
        if value is self._value:
            return self._value
        if self._backend.writable(self._value):
            self._backend.write(self._value, value)
        else:
            self._value = value
        return self._value

    def _rebind(self, storage):
        """Keep the value in ``storage`` (same shape and dtype) from now on; used to pack
        optimizer state into flat buffers."""
        storage[...] = self._value
        self._value = storage

    def assign_add(self, value: Any) -> Array:
        return self.assign(self._value + self._backend.asarray(value))

    def assign_sub(self, value: Any) -> Array:
        return self.assign(self._value - self._backend.asarray(value))

    # --- behaving like an array ----------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def __bool__(self) -> bool:
        return bool(self.numpy())

    def __len__(self) -> int:
        return len(self._value)

    def __getitem__(self, index: Any) -> Array:
        return self._value[index]

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}, value={self.numpy()}>"

    def __neg__(self):
        return -self._value

    def __abs__(self):
        return abs(self._value)


def _binary(op):
    def forward(self, other):
        return op(self._value, other._value if isinstance(other, Variable) else other)

    def reverse(self, other):
        return op(other, self._value)

    return forward, reverse


for _name, _op in {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b, "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b,
    "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b,
}.items():
    _fwd, _rev = _binary(_op)
    setattr(Variable, f"__{_name}__", _fwd)
    setattr(Variable, f"__r{_name}__", _rev)
for _name, _op in {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
}.items():
    setattr(Variable, f"__{_name}__", _binary(_op)[0])
Variable.__hash__ = object.__hash__
