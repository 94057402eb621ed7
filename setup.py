"""Build of the Cython fast path. VXTAP_DEBUG=1 builds with annotations, line tracing and asserts."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VXTAP_DEBUG") == "1"
MODULES = ["headers", "outer6", "csum", "vnet", "gso", "gro", "tables", "map128", "trace",
           "tracepoints", "queues", "sim", "switch"]

extensions = [
    Extension(
        f"fastpath.{m}",
        [f"fastpath/{m}.pyx"],
        extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O0", "-g"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [],
    )
    for m in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={"linetrace": DEBUG, "embedsignature": True},
    ),
)
