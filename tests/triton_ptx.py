"""Compile every Triton kernel the stages can ask for to PTX for sm_90, without a GPU.

Run by ``test_triton_tier`` in a process of its own (Triton must not be in its interpreter):
``python tests/triton_ptx.py float32``. Prints, last, one JSON line: per kernel, the
instructions found that round otherwise than the reference (``fma``, ``div.full``, any
``.approx``), whether it stores, and its divisions.
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
from polyak.tiers import triton_codegen, triton_fused

#: every statement a stage can give, across the calls of these steps: clipping by norm with
#: loss scale, decay, Nesterov and an EMA overwrite; accumulation (accumulating, then from the
#: accumulated gradient) with global clipping; clipping by value
CONFIGS = [
    dict(momentum=0.9, nesterov=True, clipnorm=1.0, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=1,
         loss_scale_factor=8.0),
    dict(momentum=0.9, gradient_accumulation_steps=2, use_ema=True, global_clipnorm=1.0),
    dict(momentum=0.0, clipvalue=0.5),
]
TABLES = {"chunk_tensor", "chunk_start", "weight_table", "grad_table", "sizes", "offsets", "decay"}
FORBIDDEN = re.compile(r"\b(fma\.[\w.]+|div\.full[\w.]*|[\w.]*\.approx[\w.]*)")


def kernels(options, dtype, iteration):
    """The update kernel of the call at ``iteration``, and the norm kernels it asked for."""
    opt = polyak.SGD(**options)
    opt.build([torch.nn.Parameter(torch.ones(4, dtype=dtype))])
    numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))
    norms = []

    def sum_squares(call):
        norms.append(triton_codegen.load_sum_squares(call, False))
        return np.ones(1)

    call = stages.KernelCall(iteration=iteration, stored_learning_rate=np.float32(0.01), xp=np,
                             cast=numpy_dtype.type, cast_array=lambda v: np.asarray(v).astype(numpy_dtype),
                             sum_squares=sum_squares)
    stages.kernel_call(opt._plan(), call)
    return [("update", call.key, triton_codegen.load_update(call, False))] + [("sum_squares", call.key, k)
                                                                            for k in norms]


def ptx(kernel, element):
    signature = {name: "constexpr" if name == "BLOCK" else "*i64" if name in TABLES
                 else "*fp64" if name == "out" else f"*{element}" for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": triton_fused.BLOCK})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(triton_fused.COMPILE_OPTIONS)).asm["ptx"]


def main(dtype_name):
    dtype = getattr(torch, dtype_name)
    element = {"float32": "fp32", "float64": "fp64"}[dtype_name]
    found = []
    for options in CONFIGS:
        for iteration in (0, 1):
            for kind, key, kernel in kernels(options, dtype, iteration):
                text = ptx(kernel, element)
                found.append({"name": f"{kind} {key}", "forbidden": sorted(set(FORBIDDEN.findall(text))),
                              "stores": bool(re.search(r"\bst\.global", text)),
                              "divisions": sorted(set(re.findall(r"\bdiv\.[\w.]+", text)))})
    print(json.dumps({"polyak": polyak.__file__, "kernels": found}))


if __name__ == "__main__":
    main(sys.argv[1])
