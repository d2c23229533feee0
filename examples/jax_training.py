"""Train a small JAX MLP with polyak's SGD: a `jax.jit` step built on `stateless_apply`.

The parameters are a pytree (a dict), as Flax and Equinox users hold them; the
optimizer is built on it, and its pure `stateless_apply` runs inside the jitted
step with the learning-rate schedule, momentum and weight decay: one trace for
the whole run, buffers donated.

Run: python examples/jax_training.py
"""

import jax
import jax.numpy as jnp

import polyak


def make_problem(n=512, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, 1), minval=-3.0, maxval=3.0)
    return x, jnp.sin(x) + 0.1 * jax.random.normal(ky, (n, 1))


def init(key, hidden=32):
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"kernel": jax.random.normal(k1, (1, hidden)), "bias": jnp.zeros(hidden)},
        "out": {"kernel": jax.random.normal(k2, (hidden, 1)) / jnp.sqrt(hidden), "bias": jnp.zeros(1)},
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def main(steps=300, warmup=20):
    """``steps`` optimizer steps: the rate warms up over ``warmup`` of them, then decays to 0
    at the last. Returns the optimizer and the trained parameters."""
    x, y = make_problem()
    params = init(jax.random.key(1))
    opt = polyak.SGD(
        learning_rate=polyak.schedules.CosineDecay(0.0, steps - warmup, warmup_target=0.1, warmup_steps=warmup),
        momentum=0.9, nesterov=True, weight_decay=1e-4, global_clipnorm=1.0,
    )
    opt.exclude_from_weight_decay(var_names=["bias"])  # pytree leaves are named by key path
    opt.build(params)
    opt_state = [v.value for v in opt.variables]

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = opt.stateless_apply(opt_state, grads, params)
        return params, opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    print("step  loss")
    for step in range(steps):
        params, opt_state, loss = train_step(params, opt_state, x, y)
        if step % 50 == 0 or step == steps - 1:
            print(f"{step:4d}  {float(loss):.4f}")
    for variable, value in zip(opt.variables, opt_state):  # hand the state back to the optimizer
        variable.assign(value)
    print(f"{int(opt.iterations.numpy())} optimizer steps; final loss {float(loss_fn(params, x, y)):.4f}")
    return opt, params


if __name__ == "__main__":
    main()
