"""Benchmarks record the backend and refuse to run on the reference model unless forced."""

import os
import platform

import pytest

import nvemu


def pytest_collection_modifyitems(config, items):
    if not nvemu.COMPILED and os.environ.get("NVEMU_BENCH_ALLOW_PURE") != "1":
        skip = pytest.mark.skip(reason="benchmarks need the compiled core (NVEMU_BENCH_ALLOW_PURE=1 forces)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _metadata(request):
    bench = request.node.funcargs.get("benchmark")
    if bench is not None:
        import Cython
        bench.extra_info.update(backend=nvemu.BACKEND, cython=Cython.__version__, cpu=platform.processor())
