"""Picks the engine: the compiled core, or the reference model when NVEMU_PUREPYTHON=1."""

from __future__ import annotations

import os
from typing import Any

if os.environ.get("NVEMU_PUREPYTHON") == "1":
    from ._reference import Engine
    BACKEND = "reference"
else:
    from ._core import Engine  # a missing build is an error, not a silent 100x slowdown
    BACKEND = "core"

COMPILED = BACKEND == "core"


def engine_class(backend: str | None = None) -> Any:
    """The Engine class of ``backend`` ("core" or "reference"; None: the default above)."""
    if backend is None:
        return Engine
    if backend == "core":
        from ._core import Engine as core_engine
        return core_engine
    if backend == "reference":
        from ._reference import Engine as reference_engine
        return reference_engine
    raise ValueError(f"unknown backend {backend!r}: 'core' or 'reference'")


__all__ = ["Engine", "BACKEND", "COMPILED", "engine_class"]
