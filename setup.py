"""The one build step pyproject.toml cannot state without an experimental table: stylebatch's CPU
kernels in C, one library (`stylebatch._native`, loaded with ctypes by worker/stylebatch/native.py):
the instance norms (_instance_norm.c), padded copies of pictures (_padding.c) and the frames'
conversions to and from the networks (_frames.c).
Plain C, no Python API. Optional: where there is no C compiler pip installs everything else and
fast_nets uses torch's operations instead (slower; the same pictures to within rounding)."""

from setuptools import Extension, setup

# -std=c11 (not gnu11): no contraction of a * b + c into one FMA, so the AVX-512, AVX2 and baseline
# clones (target_clones) give the same bits: a run resumed on another node paints what it would have.

setup(ext_modules=[Extension("stylebatch._native",
                             sources=[f"worker/stylebatch/{name}.c" for name in ("_instance_norm", "_padding", "_frames")],
                             depends=["worker/stylebatch/_native.h"],
                             extra_compile_args=["-O3", "-std=c11", "-pthread"], extra_link_args=["-pthread"],
                             optional=True)])
