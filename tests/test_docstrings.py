"""Every public class, function, method and property of the documented API has a docstring
(issue 15, point 7: the API reference is generated from them)."""

import importlib
import inspect

import pytest

MODULES = ["nvemu", "nvemu.formats.nfit", "nvemu.formats.trace", "nvemu.tools.checker", "nvemu.guest.workloads",
           "nvemu.guest.drivers", "nvemu.machine.config", "nvemu.tools.results", "nvemu.tools.vocabulary",
           "nvemu.tools.tasks", "nvemu.tools.sweep", "nvemu.tools.microbench", "nvemu.tools.spec",
           "nvemu.tools.plots", "nvemu.errors"]


def public(module_name):
    mod = importlib.import_module(module_name)
    for name in getattr(mod, "__all__", [n for n in dir(mod) if not n.startswith("_")]):
        obj = getattr(mod, name, None)
        if inspect.isclass(obj) and obj.__module__.startswith("nvemu"):
            yield f"{module_name}.{name}", obj
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if isinstance(value, property) or inspect.isfunction(fn):
                    yield f"{module_name}.{name}.{attr}", fn
        elif inspect.isfunction(obj) and obj.__module__.startswith("nvemu"):
            yield f"{module_name}.{name}", obj


@pytest.mark.parametrize("module_name", MODULES)
def test_public_api_has_docstrings(module_name):
    missing = [q for q, obj in public(module_name) if not (obj.__doc__ or "").strip()]
    assert missing == []
