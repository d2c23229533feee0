"""Data-parallel training across 4 devices with `jax.sharding` and polyak's SGD.

The weights (and so the optimizer state built from them) are replicated on every device, each
device gets a quarter of the batch, and `jax.jit` inserts the all-reduce of the gradients: the
same program as single-device training, only the inputs are laid out differently. The run is
checked against the single-device one.

On this CPU machine the 4 devices are simulated (the flag must be set before JAX starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/jax_data_parallel.py
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import polyak  # noqa: E402


def make_problem(n=512, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 1), minval=-3.0, maxval=3.0)
    return x, jnp.sin(x) + 0.1 * jax.random.normal(ky, (n, 1))


def init(key, hidden=32):
    k1, k2 = jax.random.split(key)
    return {"hidden": {"kernel": jax.random.normal(k1, (1, hidden)), "bias": jnp.zeros(hidden)},
            "out": {"kernel": jax.random.normal(k2, (hidden, 1)) / jnp.sqrt(hidden), "bias": jnp.zeros(1)}}


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def train(params, x, y, steps):
    opt = polyak.SGD(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, global_clipnorm=1.0,
                     use_ema=True)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build(params)
    state = [v.value for v in opt.variables]

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, state = opt.stateless_apply(state, grads, params)
        return params, state, loss

    for i in range(steps + 1):
        # One step at a time: simulated CPU devices share the host's threads, and steps queued
        # ahead can starve a collective of the threads it waits for.
        params, state, loss = jax.block_until_ready(step(params, state, x, y))
        if i % 100 == 0:
            print(f"  step {i:4d}  loss {float(loss):.4f}")
    return params


def main(steps=200):
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    x, y = make_problem()
    params = init(jax.random.key(1))

    print(f"data parallel over {len(devices)} devices:")
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    x_sharded, y_sharded = (jax.device_put(a, NamedSharding(mesh, P("data", None))) for a in (x, y))
    print(f"  each device holds {x_sharded.addressable_shards[0].data.shape[0]} of {x.shape[0]} examples")
    parallel = train(replicated, x_sharded, y_sharded, steps)

    print("one device:")
    single = train(params, x, y, steps)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(parallel), jax.tree.leaves(single)))
    print(f"largest weight difference, {len(devices)} devices vs one: {gap:.1e} (float32 sums in another order)")


if __name__ == "__main__":
    main()
