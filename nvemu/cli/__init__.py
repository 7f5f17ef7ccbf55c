"""The ``nvemu`` command line (``nvemu.cli.main:main``)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
