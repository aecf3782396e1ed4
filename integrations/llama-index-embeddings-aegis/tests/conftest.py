from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from aegis_router import Encoder  # noqa: E402


class CountingEncoder(Encoder):
    """The demo encoder, with a record of every batch it embeds.

    It shares the loaded weights of the encoder it wraps. ``batches`` gets one
    ``(method, number_of_texts)`` entry per call; ``before_encode``, when set,
    runs in the encoding thread before each call.
    """

    def __init__(self, inner: Encoder) -> None:
        self.__dict__.update(inner.__dict__)
        self.batches: list[tuple[str, int]] = []
        self.threads: list[int] = []
        self.before_encode: Callable[[], None] | None = None

    def encode_tiers(self, texts: Sequence[str], tiers, **options):
        self._record("encode_tiers", texts)
        return super().encode_tiers(texts, tiers, **options)

    def encode_with_state(self, texts: Sequence[str], tier, **options):
        self._record("encode_with_state", texts)
        return super().encode_with_state(texts, tier, **options)

    def calls(self, method: str) -> list[int]:
        """The batch sizes of every call to ``method``, in call order."""
        return [size for name, size in self.batches if name == method]

    def _record(self, method: str, texts: Sequence[str]) -> None:
        self.batches.append((method, len(texts)))
        self.threads.append(threading.get_ident())
        if self.before_encode is not None:
            self.before_encode()


@pytest.fixture(scope="session")
def demo_encoder() -> Encoder:
    from llama_index.embeddings.aegis import shared_encoder

    return shared_encoder("demo")


@pytest.fixture
def counting_encoder(demo_encoder) -> CountingEncoder:
    return CountingEncoder(demo_encoder)
