#!/usr/bin/env bash
# Set-up for benchmarks/gpu_check.py on a lent GPU machine without network (it has PyTorch with
# CUDA, Triton, JAX with CUDA, numba and safetensors, not necessarily polyak's other, pure-Python
# needs). Two steps:
#   here, with network:  bash benchmarks/gpu_setup.sh download   (wheels into .gpu-wheels/, ignored by git)
#   there (carry .gpu-wheels):  bash benchmarks/gpu_setup.sh && python benchmarks/gpu_check.py --json "$OUT/h100.json"
# There, a wheel is installed only where its module does not import already, then polyak itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# module:distribution, for each pure-Python package polyak (array_api_compat) or the bench (optax) imports
NEEDS="array_api_compat:array-api-compat optax:optax chex:chex absl:absl-py toolz:toolz"
if [ "${1:-}" = "download" ]; then
    python -m pip download --quiet --no-deps --only-binary=:all: -d .gpu-wheels $(for n in $NEEDS; do echo "${n#*:}"; done)
    ls .gpu-wheels
    exit 0
fi
for n in $NEEDS; do
    module="${n%%:*}"; wheel="$(echo "${n#*:}" | tr - _)"
    if ! python -c "import $module" 2>/dev/null; then
        python -m pip install --quiet --no-deps --no-index .gpu-wheels/"$wheel"-*.whl
    fi
done
python -m pip install --quiet --no-deps -e .
python -c "import polyak, array_api_compat; print('polyak from', polyak.__file__)"
