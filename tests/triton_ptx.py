"""Compile every Triton kernel the stages can ask for to PTX for sm_90, without a GPU.

Run by ``test_triton_tier`` in a process of its own (Triton must not be in its interpreter):
``python tests/triton_ptx.py float16``. For 16-bit weights, the kernels with master weights
too. Prints, last, one JSON line: per kernel, the instructions found that round otherwise than
the reference (``fma``, ``div.full``, any ``.approx``, flushing subnormals with ``.ftz``),
whether it stores, its vector loads and stores (the tier's aligned kernels, compiled as Triton
specializes a launch on 16-byte aligned tensors), its divisions and its conversions.
"""

import json
import re
import sys

import numpy as np
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import polyak
from polyak.core import stages
from polyak.tiers import calls, triton_codegen, triton_fused

#: every statement a stage can give, across the calls of these steps: clipping by norm with
#: loss scale, decay, Nesterov and an EMA overwrite; accumulation (accumulating, then from the
#: accumulated gradient) with global clipping; clipping by value; and, for 16-bit weights
#: (which the tier steps without clipping by norm), all but clipping with accumulation; a
#: guarded step (``skip_nonfinite``: the flag's norm pass, the update gated by the flag)
CONFIGS = [
    dict(momentum=0.9, nesterov=True, clipnorm=1.0, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=1,
         loss_scale_factor=8.0),
    dict(momentum=0.9, gradient_accumulation_steps=2, use_ema=True, global_clipnorm=1.0),
    dict(momentum=0.0, clipvalue=0.5),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=1,
         loss_scale_factor=8.0, gradient_accumulation_steps=2),
    dict(momentum=0.9, weight_decay=0.1, clipvalue=0.5, loss_scale_factor=8.0, skip_nonfinite=True),
]
TABLES = {"chunk_tensor", "chunk_start", "weight_table", "grad_table", "sizes", "offsets", "decay"}
ELEMENT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
FORBIDDEN = re.compile(r"\b(fma\.[\w.]+|div\.full[\w.]*|[\w.]*\.approx[\w.]*|[\w.]*\.ftz[\w.]*)")


def kernels(options, dtype, iteration):
    """The update kernel of the call at ``iteration`` and the norm kernels it asked for, when
    the tier takes ``options`` on weights of ``dtype``: ``(types, [(kind, key, kernel)])``."""
    opt = polyak.SGD(**options)
    opt.build([torch.nn.Parameter(torch.ones(4, dtype=dtype))])
    masters = any(m is not None for m in opt.state_roles.role("master"))
    types = triton_codegen.Types(str(dtype).removeprefix("torch."), masters, aligned=True)
    if not triton_fused.takes(types, opt._plan()):
        return types, []
    norms = []

    def sum_squares(call):
        norms.append(triton_codegen.load_sum_squares(call, False, types))
        return np.ones(1)

    cast = calls.DeviceCast(getattr(torch, types.compute))
    call = stages.KernelCall(iteration=iteration, stored_learning_rate=np.float32(0.01), xp=np, cast=cast,
                             cast_array=cast, sum_squares=sum_squares)
    stages.kernel_call(opt._plan(), call)
    if options.get("skip_nonfinite"):  # the stages asked for the guard's check pass too
        types = types._replace(guarded=True)
    found = [("update", call.key, triton_codegen.load_update(call, False, types))]
    return types, found + [("sum_squares", call.key, k) for k in norms]


def ptx(kernel, types):
    scalar = {"scalars": types.scalar, "denominators": types.scalar, "out": "float64"}
    signature = {name: "constexpr" if name == "BLOCK" else "*i64" if name in TABLES else "*i1" if name == "finite"
                 else f"*{ELEMENT[scalar.get(name, types.compute)]}" for name in kernel.arg_names}
    # as Triton specializes a launch on tensors whose addresses are multiples of 16 (fresh allocations)
    aligned = {(k,): [["tt.divisibility", 16]] for k, name in enumerate(kernel.arg_names) if name != "BLOCK"}
    source = ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": triton_fused.BLOCK}, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(triton_fused.COMPILE_OPTIONS)).asm["ptx"]


def main(dtype_name):
    dtype = getattr(torch, dtype_name)
    found = []
    for master_weights in ((False, True) if dtype_name in ("float16", "bfloat16") else (False,)):
        for options in CONFIGS:
            for iteration in (0, 1):
                types, made = kernels({**options, "master_weights": master_weights}, dtype, iteration)
                for kind, key, kernel in made:
                    text = ptx(kernel, types)
                    found.append({"name": f"{kind} {key} {types}", "masters": types.masters,
                                  "guarded": bool(re.search(r"\bld\.global(?:\.\w+)*\.b8", text)) and types.guarded,
                                  "forbidden": sorted(set(FORBIDDEN.findall(text))),
                                  "stores": bool(re.search(r"\bst\.global", text)),
                                  "vector_loads": len(re.findall(r"\bld\.global(?:\.\w+)*\.v[24]\.", text)),
                                  "vector_stores": len(re.findall(r"\bst\.global(?:\.\w+)*\.v[24]\.", text)),
                                  "divisions": sorted(set(re.findall(r"\bdiv\.[\w.]+", text))),
                                  "conversions": sorted(set(re.findall(r"\bcvt\.[\w.]+", text)))})
    print(json.dumps({"polyak": polyak.__file__, "kernels": found}))


if __name__ == "__main__":
    main(sys.argv[1])
