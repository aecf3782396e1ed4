"""Package-level checks: the public names, a light import, and the agent example still running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_aegis

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "langchain_agent.py"


def test_all_lists_public_names():
    public = {name for name in vars(langchain_aegis) if not name.startswith("_")}
    modules = {"embeddings", "tool_selection"}

    assert set(langchain_aegis.__all__) == public - modules
    for name in langchain_aegis.__all__:
        assert getattr(langchain_aegis, name) is not None


def test_import_does_not_load_torch():
    code = (
        "import sys, langchain_aegis, langchain_aegis.embeddings, langchain_aegis.tool_selection; "
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)

    assert completed.stdout.strip() == "[]"


@pytest.mark.slow
def test_agent_example_runs():
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    output = completed.stdout

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert len(re.findall(r"^turn \d+: ", output, flags=re.MULTILINE)) == 11
    assert len(re.findall(r"^  offered 5 of 5[78] tools", output, flags=re.MULTILINE)) == 11
    assert "the needed tool was offered in 10 of 10 turns" in output
    assert "tool index built 1 time(s) for 10 turns" in output
    assert "tool index built 2 time(s) after adding book_taxi" in output
