"""The only place the extensions are declared (the engine, and the checker's model).
NVEMU_PUREPYTHON=1 skips them (reference model only); NVEMU_DEBUG_DIRECTIVES=1 turns bounds and
initialization checks on and writes annotated HTML."""

import os

from setuptools import Extension, setup

PURE = os.environ.get("NVEMU_PUREPYTHON") == "1"
DEBUG = os.environ.get("NVEMU_DEBUG_DIRECTIVES") == "1"

ext_modules = []
if not PURE:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("nvemu._core", ["nvemu/_core.pyx"]), Extension("nvemu._checkcore", ["nvemu/_checkcore.pyx"])],
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
            "embedsignature": True,
        },
        annotate=DEBUG,
    )

setup(ext_modules=ext_modules)
