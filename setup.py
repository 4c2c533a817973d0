"""The one build step pyproject.toml cannot state without an experimental table: the CPU's instance
norms in C (worker/stylebatch/_instance_norm.c; fast_nets.instance_norm_ loads it with ctypes through
native_norm.py). A plain C library, no Python API. Optional: where there is no C compiler pip installs
everything else and the norms run as torch's operations (the same statistics, 2-4x slower)."""

from setuptools import Extension, setup

# -std=c11 (not gnu11): no contraction of a * b + c into one FMA, so the AVX-512, AVX2 and baseline
# clones (target_clones) give the same bits: a run resumed on another node paints what it would have.

setup(ext_modules=[Extension("stylebatch._instance_norm", sources=["worker/stylebatch/_instance_norm.c"],
                             extra_compile_args=["-O3", "-std=c11", "-pthread"], extra_link_args=["-pthread"],
                             optional=True)])
