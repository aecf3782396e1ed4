"""LangChain's own standard test suites for embeddings, run on AegisEmbeddings with the demo model.

None of the standard tests is skipped or overridden. ``test_init_from_env``
passes without checking anything because AegisEmbeddings reads no environment
variables, so ``init_from_env_params`` is left empty.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_aegis import AegisEmbeddings

# The standard classes mix sync and async tests. The anyio marker runs the async
# ones and is ignored on the sync ones, where pytest-asyncio's marker would warn.
pytestmark = pytest.mark.anyio


class TestAegisEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[AegisEmbeddings]:
        return AegisEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "demo"}


class TestAegisEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[AegisEmbeddings]:
        return AegisEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "demo"}


class TestAegisEmbeddingsShallowTierIntegration(EmbeddingsIntegrationTests):
    """The same suite with a narrow document tier and a shallower query tier."""

    @property
    def embeddings_class(self) -> type[AegisEmbeddings]:
        return AegisEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "demo", "tier": "4x128", "query_tier": "2x128", "batch_size": 2}
