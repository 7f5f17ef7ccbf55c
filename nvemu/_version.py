"""The package version (read by setuptools and ``nvemu --version``)."""

__version__ = "0.1.0"
