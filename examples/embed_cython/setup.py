"""Builds sim_loop against the installed nvemu's _core.pxd (found through ``nvemu.get_include()``)."""

import nvemu
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(name="sim_loop", ext_modules=cythonize([Extension("sim_loop", ["sim_loop.pyx"])],
                                              include_path=[nvemu.get_include()],
                                              compiler_directives={"language_level": 3}))
