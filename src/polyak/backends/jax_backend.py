"""The JAX backend: kernels that trace under ``jax.jit``, branching on traced predicates.

JAX arrays are immutable, so plain arrays are trained through the pure
``stateless_apply`` and ``polyak.Variable`` objects by rebinding their value.

The iteration counter is int64 when ``jax_enable_x64`` is on. Without it JAX
has no int64, and the int32 counter *saturates* at ``2**31 - 1`` instead of
wrapping to a negative count (as optax's ``safe_int32_increment`` does): past
two billion steps a schedule sees a constant step, never a jump back to its start.

A branch of the step on a traced predicate (accumulate or update, the
``skip_nonfinite`` and loss-scale guards, the EMA overwrite) compiles one of two
ways, chosen by the environment variable ``POLYAK_JAX_BRANCHES`` (see
:func:`branch_mode`): ``cond``, an XLA ``conditional`` that runs one branch, or
``select``, both branches and a device-side select per array. Both give the same
numbers from one trace.

Imported only once the user's arrays are JAX arrays.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from polyak.backends.kinds import dtype_name, host_array
from polyak.backends.base import Backend


#: The environment variable that picks how a traced step branches; see :func:`branch_mode`.
BRANCHES_VARIABLE = "POLYAK_JAX_BRANCHES"
BRANCH_SETTINGS = ("cond", "select", "auto")
#: JAX's platform names of the GPUs (``jax.default_backend()``, ``Device.platform``).
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def _traced(value):
    return isinstance(value, jax.core.Tracer)


def branch_setting() -> str:
    """``POLYAK_JAX_BRANCHES`` as set ("cond" when unset or empty), after checking it is one
    of ``BRANCH_SETTINGS``; a ``ValueError`` naming the variable and its value otherwise."""
    value = os.environ.get(BRANCHES_VARIABLE) or "cond"
    if value not in BRANCH_SETTINGS:
        raise ValueError(
            f"`{BRANCHES_VARIABLE}` must be one of {', '.join(map(repr, BRANCH_SETTINGS))}. "
            f"Received: {BRANCHES_VARIABLE}={value!r}"
        )
    return value


def branch_mode(platform=None) -> str:
    """How a step traced now branches on a traced predicate: "cond" or "select".

    ``POLYAK_JAX_BRANCHES`` chooses:

    * ``cond`` (the default): ``jax.lax.cond``, an XLA ``conditional`` that runs one branch.
    * ``select``: both branches run, then ``jnp.where`` picks each array on the device. The
      unpicked branch's values are computed and dropped: an inf or NaN there (the step on
      a non-finite gradient that ``skip_nonfinite`` skips) never reaches the result.
    * ``auto``: ``select`` on a GPU, ``cond`` elsewhere. XLA's GPU runtime runs a
      ``conditional`` by copying its predicate to the host and blocking until the stream
      has finished (``ConditionalThunk::ExecuteOnStream`` in XLA's
      ``xla/backends/gpu/runtime/conditional_thunk.cc``): a host synchronisation per
      conditional per step, which a select does not need. On the CPU the predicate is
      already on the host, and ``cond`` skips the other branch's work.

    ``platform`` (for ``auto``): the platform the step runs on; by default
    ``jax.default_backend()``. The variable is read when a step is traced: a function that
    ``jax.jit`` has already traced and cached keeps the branches it was traced with (jit a
    new function, or call ``jax.clear_caches()``, after changing it).
    """
    setting = branch_setting()
    if setting != "auto":
        return setting
    platform = jax.default_backend() if platform is None else platform
    return "select" if platform in _GPU_PLATFORMS else "cond"


def _select(pred, a, b):
    """``a`` where ``pred`` else ``b``, array by array over two trees of one structure
    (lists, tuples, NamedTuples, Nones): an array both trees share is taken as it is."""
    return jax.tree.map(lambda x, y: x if x is y else jnp.where(pred, x, y), a, b)


class JaxBackend(Backend):
    name = "jax"
    xp = jnp
    float32 = jnp.dtype("float32")
    unwritable_hint = (
        "JAX arrays are immutable. Call `stateless_apply` (e.g. under `jax.jit`) with the arrays' values, "
        "or wrap each array in a polyak.Variable, whose value `apply` rebinds"
    )
    unwritable_error = TypeError

    @property
    def counter_dtype(self):
        return jnp.dtype("int64") if jax.config.jax_enable_x64 else jnp.dtype("int32")

    def owns(self, value):
        return isinstance(value, jax.Array)

    def asarray(self, value, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        if isinstance(value, jax.Array):
            return value if dtype is None or value.dtype == dtype else value.astype(dtype)
        return jnp.asarray(host_array(value, transfer=True), dtype=dtype)

    def convert(self, value, what):
        if isinstance(value, jax.Array):
            return value
        array = host_array(value) if jax.default_backend() == "cpu" else None
        if array is None:
            raise TypeError(
                f"{what} is a {type(value).__name__}, which cannot be converted to a "
                "JAX array without a device transfer. Pass a JAX array."
            )
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{what} must be a real number array. Received: dtype={array.dtype}")
        return jnp.asarray(array)

    def cast(self, value, dtype):
        if isinstance(value, jax.Array):
            return value if value.dtype == dtype else value.astype(dtype)
        return jnp.asarray(value, dtype=dtype)

    def scalar(self, value, dtype):
        return jnp.asarray(value, dtype=dtype)

    def zeros_like(self, value):
        if _traced(value) or not value.committed:
            return jnp.zeros_like(value)
        return jnp.zeros_like(value, device=value.sharding)

    def copy(self, value):
        return jnp.array(value, copy=True)

    def dtype(self, spec):
        """JAX's dtype for ``spec``: without ``jax_enable_x64``, 64-bit types are their 32-bit ones."""
        return jax.dtypes.canonicalize_dtype(jnp.dtype(dtype_name(spec)))

    def kind(self, dtype):
        return "f" if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(dtype).kind

    def cond(self, pred, true_fn, false_fn):
        """A concrete predicate picks a branch on the host. A traced one (under ``jax.jit``)
        becomes ``lax.cond``, or both branches and a select, as :func:`branch_mode` says;
        either way each branch is traced once."""
        if not _traced(pred):
            return true_fn() if bool(pred) else false_fn()
        if branch_mode() == "select":
            pred = pred if pred.dtype == jnp.bool_ else pred != 0
            return _select(pred, true_fn(), false_fn())
        return jax.lax.cond(pred, true_fn, false_fn)

    def add(self, a, b):
        # XLA on the CPU emits a lone elementwise add over a 4-d array (a conv kernel) as
        # nested scalar loops, ~4x slower than the same add fused with a multiply. Multiplying
        # by a 1 that XLA cannot fold keeps it fused; ``b * 1`` is exactly ``b``.
        one = jax.lax.optimization_barrier(jnp.ones((), b.dtype))
        return a + b * one

    def increment(self, counter):
        info = jnp.iinfo(counter.dtype)
        if info.bits >= 64:
            return counter + 1
        return jnp.where(counter < info.max, counter + 1, counter)

    def to_numpy(self, value):
        return host_array(value, transfer=True)

    def check_devices(self, values, paths):
        placed = [(v, p) for v, p in zip(values, paths) if isinstance(v, jax.Array) and not _traced(v)]
        for value, path in placed[1:]:
            if value.devices() != placed[0][0].devices():
                raise ValueError(
                    f"All trainable variables of one optimizer must be on the same devices. Received: "
                    f"{placed[0][1]!r} is on {sorted(map(str, placed[0][0].devices()))} and {path!r} is on "
                    f"{sorted(map(str, value.devices()))}"
                )

    def writable(self, target):
        return False

    def write(self, target, value):
        raise TypeError(self.unwritable_hint + ".")


JAX = JaxBackend()
