"""Picks the engine: the compiled core, or the reference model when NVEMU_PUREPYTHON=1."""

from __future__ import annotations

import os

if os.environ.get("NVEMU_PUREPYTHON") == "1":
    from ._reference import Engine
    BACKEND = "reference"
else:
    from ._core import Engine  # a missing build is an error, not a silent 100x slowdown
    BACKEND = "core"

COMPILED = BACKEND == "core"

__all__ = ["Engine", "BACKEND", "COMPILED"]
