"""Sphinx configuration: autodoc with napoleon (numpydoc-style docstrings), the CLI reference and
results vocabulary generated from the code (``_ext/nvemu_docs.py``). Built in CI with warnings as
errors: ``python -m sphinx -W -b html docs docs/_build``."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import nvemu  # noqa: E402

project = "nvemu"
author = "the nvemu authors"
copyright = "the nvemu authors (MIT licence)"
release = version = nvemu.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "nvemu_docs"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_type_aliases = {"PathLike": "PathLike"}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
