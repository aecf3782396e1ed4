from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import aegis_router


def test_every_module_imports():
    for module in pkgutil.iter_modules(aegis_router.__path__):
        importlib.import_module(f"aegis_router.{module.name}")


def test_all_names_resolve():
    for name in aegis_router.__all__:
        assert getattr(aegis_router, name) is not None, name


def test_all_is_sorted_and_unique():
    assert list(aegis_router.__all__) == sorted(set(aegis_router.__all__))


def test_import_loads_no_torch():
    code = "import sys, aegis_router; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_unknown_attribute_names_module():
    try:
        aegis_router.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_lazy_names_are_public():
    assert set(aegis_router._LAZY) <= set(aegis_router.__all__)
