"""Run by ``test_distributed_jax.py`` in a fresh process with 4 host CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX is imported, so
this cannot run inside the pytest process. It checks, on a 4-device mesh, that a jitted
``stateless_apply`` (1) on parameters sharded over the devices keeps every optimizer state entry
sharded like its parameter and gives the unsharded run's numbers, and (2) on replicated
parameters with the batch sharded (data parallelism) gives the unsharded run's numbers.
Exits non-zero on any mismatch.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import polyak

STEPS = 6
CONFIG = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=0.5,
              use_ema=True, ema_momentum=0.8, gradient_accumulation_steps=2)


def init():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {"hidden": {"kernel": jax.random.normal(k1, (4, 8)) / 2, "bias": jnp.zeros(8)},
            "out": {"kernel": jax.random.normal(k2, (8, 4)) / 3, "bias": jax.random.normal(k3, (4,))}}


def batch():
    x = jax.random.normal(jax.random.key(1), (16, 4))
    return x, jnp.sin(x.sum(axis=1, keepdims=True))


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean(((h @ params["out"]["kernel"] + params["out"]["bias"]).sum(axis=1, keepdims=True) - y) ** 2)


def train(params, x, y):
    opt = polyak.SGD(**CONFIG)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build(params)
    state = [v.value for v in opt.variables]

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        return opt.stateless_apply(state, grads, params)

    for _ in range(STEPS):  # one at a time: queued steps can starve a collective of host threads
        params, state = jax.block_until_ready(step(params, state, x, y))
    return params, state, opt


def owners(opt, params):
    """The weight each optimizer variable belongs to (None for the scalars), by its name."""
    by_prefix = {path.replace("/", "_") + "_": leaf for path, leaf in zip(opt._trainable_paths, jax.tree.leaves(params))}
    return [next((leaf for prefix, leaf in by_prefix.items() if v.name.startswith(prefix)), None)
            for v in opt.variables]


def same(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-6, atol=1e-6, err_msg=what)


def mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def check_sharded_parameters():
    """Each weight split over the 4 devices along one axis; the state follows."""
    grid = mesh()
    params = init()
    x, y = batch()
    want_params, want_state, _ = train(params, x, y)

    spec = {"hidden": {"kernel": P(None, "data"), "bias": P("data")},
            "out": {"kernel": P("data", None), "bias": P("data")}}
    sharded = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(grid, s)), params, spec)
    got_params, got_state, opt = train(sharded, x, y)

    same(got_params, want_params, "sharded parameters")
    same(got_state, want_state, "optimizer state with sharded parameters")
    for leaf, s in zip(jax.tree.leaves(got_params), jax.tree.leaves(spec, is_leaf=lambda n: isinstance(n, P))):
        assert leaf.sharding.is_equivalent_to(NamedSharding(grid, s), leaf.ndim), leaf.sharding
    per_weight = 0
    for variable, value, owner in zip(opt.variables, got_state, owners(opt, got_params)):
        if owner is None:
            continue
        per_weight += 1
        assert value.sharding.is_equivalent_to(owner.sharding, value.ndim), (variable.path, value.sharding)
        shard = value.addressable_shards[0].data
        assert shard.size * 4 == value.size, (variable.path, shard.shape, value.shape)
    assert per_weight == 3 * 4, per_weight  # average, accumulator, momentum for 4 weights
    print(f"sharded parameters: {per_weight} state entries sharded like their weights over "
          f"{len(jax.devices())} devices; numbers equal the unsharded run")


def check_data_parallel():
    """Replicated weights, the batch split over the 4 devices: XLA all-reduces the gradients."""
    grid = mesh()
    params = init()
    x, y = batch()
    want_params, want_state, _ = train(params, x, y)
    replicated = jax.device_put(params, NamedSharding(grid, P()))
    xs, ys = (jax.device_put(a, NamedSharding(grid, P("data", None))) for a in (x, y))
    got_params, got_state, _ = train(replicated, xs, ys)
    same(got_params, want_params, "data-parallel parameters")
    same(got_state, want_state, "data-parallel optimizer state")
    print("data parallel: batch over 4 devices equals the single-device run")


if __name__ == "__main__":
    assert "--xla_force_host_platform_device_count=4" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"
    assert len(jax.devices()) == 4, jax.devices()
    check_sharded_parameters()
    check_data_parallel()
    sys.exit(0)
