from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The public benchmark sets live beside the clone, never inside it.
BENCHMARKS = Path(os.environ.get("AEGIS_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))


@pytest.fixture(scope="session")
def tiny_modernbert_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("modernbert"), "modernbert")


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="session")
def demo_encoder():
    from aegis_router import Encoder

    return Encoder.from_pretrained("demo")
