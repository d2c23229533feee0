"""Each contender sets up a workload on a device ("cpu" or "cuda") and returns a zero-argument
step function; on "cuda" the step returns once the GPU has finished it.

A contender raises ``Unavailable`` when its framework (or polyak's backend for
it) is not installed, or cannot run on the device; the harness then leaves its column empty.
"""

from __future__ import annotations

import os

import numpy as np

from polyak.bench.workloads import Workload


class Unavailable(Exception):
    """The contender cannot run here (missing package or backend)."""


def _arrays(workload: Workload, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=np.float32) for s in workload.shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in workload.shapes]
    return params, grads


def _decay_names(workload):
    return ["bias"] if workload.exclude_vectors else None


def _named(module, params, workload):
    """Variables named so that 1-d tensors (biases, norm scales) are excluded from decay by name."""
    return [module.Variable(p, name=f"t{i}_{'bias' if p.ndim == 1 else 'kernel'}") for i, p in enumerate(params)]


def _host_only(device):
    if device != "cpu":
        raise Unavailable("runs on the CPU only")


def polyak_numpy(workload, device="cpu"):
    _host_only(device)
    import polyak

    params, grads = _arrays(workload)
    opt = polyak.SGD(**workload.options)
    variables = _named(polyak, params, workload) if workload.exclude_vectors else params
    if workload.exclude_vectors:
        opt.exclude_from_weight_decay(var_names=_decay_names(workload))
    opt.build(variables)
    return lambda: opt.apply(grads, variables)


def _torch(device):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("torch sees no CUDA device")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _finished(torch, device, step):
    """``step``, returning once the device has run it."""
    if device == "cpu":
        return step

    def synchronized():
        step()
        torch.cuda.synchronize()

    return synchronized


def polyak_torch(workload, device="cpu"):
    torch = _torch(device)
    import polyak

    params, grads = _arrays(workload)
    tensors = [torch.nn.Parameter(torch.from_numpy(p).to(device)) for p in params]
    tgrads = [torch.from_numpy(g).to(device) for g in grads]
    opt = polyak.SGD(**workload.options)
    if workload.exclude_vectors:
        opt.exclude_from_weight_decay(var_list=[t for t in tensors if t.ndim == 1])
    try:
        opt.build(tensors)
    except TypeError as error:
        raise Unavailable(f"polyak has no torch backend here ({error})") from None
    return _finished(torch, device, lambda: opt.apply(tgrads, tensors))


def _torch_sgd(workload, device, **flags):
    torch = _torch(device)
    params, grads = _arrays(workload)
    tensors = [torch.nn.Parameter(torch.from_numpy(p).to(device)) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g).to(device)
    o = workload.options
    opt = torch.optim.SGD(tensors, lr=o["learning_rate"], momentum=o["momentum"],
                          nesterov=o.get("nesterov", False), **flags)
    if not o.get("use_ema"):
        return _finished(torch, device, opt.step)
    # What a PyTorch user writes for the full feature set: clip, decoupled decay, fused SGD, EMA.
    decayed = [t for t in tensors if t.ndim > 1]
    shrink = 1.0 - o["learning_rate"] * o["weight_decay"]
    averages = [t.detach().clone() for t in tensors]

    def step():
        torch.nn.utils.clip_grad_norm_(tensors, o["global_clipnorm"], foreach=True)
        with torch.no_grad():
            torch._foreach_mul_(decayed, shrink)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(averages, tensors, 1.0 - 0.99)

    return _finished(torch, device, step)


def torch_foreach(workload, device="cpu"):
    return _torch_sgd(workload, device, foreach=True)


def torch_fused(workload, device="cpu"):
    return _torch_sgd(workload, device, fused=True)


def _jax(device):
    """JAX, and its device for ``device`` ("cuda": its first GPU). On a GPU that PyTorch shares
    in the same process, JAX allocates as it goes instead of taking most of the memory at its
    first use (read when JAX starts its GPU client, so set before any JAX array is made)."""
    if device == "cuda":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except ImportError:
        raise Unavailable("jax is not installed") from None
    try:
        return jax, jax.devices("gpu" if device == "cuda" else "cpu")[0]
    except RuntimeError:
        raise Unavailable(f"jax has no {device} device") from None


def polyak_jax(workload, device="cpu"):
    jax, where = _jax(device)
    import polyak

    params, grads = _arrays(workload)
    values = [jax.device_put(p, where) for p in params]
    jgrads = [jax.device_put(g, where) for g in grads]
    opt = polyak.SGD(**workload.options)
    try:
        opt.build([polyak.Variable(v) for v in values])
    except TypeError as error:
        raise Unavailable(f"polyak has no JAX backend here ({error})") from None
    # Donate the weights first: JAX pairs donated inputs with outputs in order, and
    # stateless_apply returns (weights, optimizer values), so this order updates in place.
    step = jax.jit(lambda params, values, grads: opt.stateless_apply(values, grads, params), donate_argnums=(0, 1))
    state = {"opt": [v.value for v in opt.variables], "params": values}

    def run():
        state["params"], state["opt"] = step(state["params"], state["opt"], jgrads)
        jax.block_until_ready(state["params"])

    return run


def optax_sgd(workload, device="cpu"):
    jax, where = _jax(device)
    try:
        import optax
    except ImportError:
        raise Unavailable("optax is not installed") from None
    if workload.options.get("use_ema"):
        raise Unavailable("no optax composite for this workload")
    params, grads = _arrays(workload)
    o = workload.options
    tx = optax.sgd(o["learning_rate"], momentum=o["momentum"], nesterov=o.get("nesterov", False))
    values = [jax.device_put(p, where) for p in params]
    jgrads = [jax.device_put(g, where) for g in grads]

    @jax.jit
    def _step(values, state, grads):
        updates, state = tx.update(grads, state, values)
        return optax.apply_updates(values, updates), state

    step = jax.jit(_step, donate_argnums=(0, 1))
    state = {"params": values, "opt": tx.init(values)}

    def run():
        state["params"], state["opt"] = step(state["params"], state["opt"], jgrads)
        jax.block_until_ready(state["params"])

    return run


def keras_sgd(workload, device="cpu"):
    _host_only(device)
    os.environ.setdefault("KERAS_BACKEND", "numpy")
    try:
        import keras
    except ImportError:
        raise Unavailable("keras is not installed") from None
    params, grads = _arrays(workload)
    variables = _named(keras, params, workload)
    opt = keras.optimizers.SGD(**workload.options)
    if workload.exclude_vectors:
        opt.exclude_from_weight_decay(var_names=_decay_names(workload))
    opt.build(variables)
    return lambda: opt.apply(grads, variables)


#: Names without spaces, so that they pass on a command line unquoted.
CONTENDERS = {
    "polyak-numpy": polyak_numpy,
    "polyak-torch": polyak_torch,
    "polyak-jax": polyak_jax,
    "torch-foreach": torch_foreach,
    "torch-fused": torch_fused,
    "optax": optax_sgd,
    "keras-numpy": keras_sgd,
}

#: The names the harness used before, still accepted (quoted) by ``contender_name``.
ALIASES = {
    "polyak numpy": "polyak-numpy",
    "polyak torch": "polyak-torch",
    "polyak jax": "polyak-jax",
    "torch foreach": "torch-foreach",
    "torch fused": "torch-fused",
    "keras (numpy)": "keras-numpy",
}


def contender_name(text: str) -> str:
    """The contender's name for ``text``: a name of ``CONTENDERS`` or an old alias of one,
    in any case (an unknown name comes back as given, for the caller to refuse)."""
    name = text.strip().lower()
    return ALIASES.get(name, name)
