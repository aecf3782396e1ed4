from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import llama_index.embeddings.aegis as package

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MODULES = ["base", "encoders", "selector", "tool_retriever"]


def test_all_names_resolve():
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_all_lists_public_classes():
    for module_name in MODULES:
        module = importlib.import_module(f"llama_index.embeddings.aegis.{module_name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and not name.startswith("_"):
                assert name in package.__all__, f"{module.__name__}.{name} is missing from __all__"


def test_namespace_packages_have_no_init():
    assert not (PACKAGE_ROOT / "llama_index" / "__init__.py").exists()
    assert not (PACKAGE_ROOT / "llama_index" / "embeddings" / "__init__.py").exists()


def test_import_does_not_load_torch():
    code = "import sys, llama_index.embeddings.aegis; print('torch' in sys.modules)"

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert output.stdout.strip() == "False"
