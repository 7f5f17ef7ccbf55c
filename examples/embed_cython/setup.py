"""Builds sim_loop against the installed nvemu's _core.pxd."""

import os

import nvemu
from Cython.Build import cythonize
from setuptools import Extension, setup

include = os.path.dirname(os.path.dirname(nvemu.__file__))
setup(name="sim_loop", ext_modules=cythonize([Extension("sim_loop", ["sim_loop.pyx"])], include_path=[include],
                                              compiler_directives={"language_level": 3}))
