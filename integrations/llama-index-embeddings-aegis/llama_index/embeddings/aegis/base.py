"""AegisEmbedding: a LlamaIndex embedding model that runs an aegis-router encoder at a chosen tier."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aegis_router import Tier
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE

from .encoders import check_tier, resolve_encoder, to_tier

if TYPE_CHECKING:
    from aegis_router import Encoder

logger = logging.getLogger(__name__)


class AegisEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model that runs an aegis-router encoder only as deep as a tier sets.

    A tier is a (layers, dim) pair: the encoder stops after ``layers`` layers
    and keeps the first ``dim`` dimensions, so a shallow tier is cheaper. The
    query tier may run fewer layers than the document tier, but both must keep
    the same number of dimensions, because vectors of different widths cannot
    be compared. Vectors are L2-normalised, so cosine and dot-product
    similarity agree.

    NOTE: a model trained for early exits (aegis-embed) compares vectors best
    when both sides use the same tier. The bundled demo model, all-MiniLM-L6-v2,
    was never trained for early exits, so its vectors from fewer than 6 layers
    are untested for retrieval. Measure before using a shallower tier with it.

    Settings serialise with ``to_dict``/``to_json`` and pickle without the
    loaded weights. Rebuilding the object loads the model again by
    ``model_name``, once per process and shared with the other aegis components.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        description="aegis-router model: 'demo' (the bundled all-MiniLM-L6-v2), a local sentence-transformers folder or a hub id."
    )
    tier: Tier = Field(description="Tier for document (text) embeddings; the model's full tier unless given.")
    query_tier: Tier = Field(description="Tier for query embeddings; the document tier unless given. Must keep the same dim.")

    _encoder: Encoder = PrivateAttr()
    _query_prompt: str | None = PrivateAttr(default=None)
    _document_prompt: str | None = PrivateAttr(default=None)

    def __init__(
        self,
        model_name: str | None = None,
        tier: Tier | str | dict[str, int] | None = None,
        query_tier: Tier | str | dict[str, int] | None = None,
        *,
        encoder: Encoder | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        """Load ``model_name`` (default ``"demo"``), or use a loaded ``encoder``, and check both tiers against it.

        Tiers are given as :class:`aegis_router.Tier`, ``"LAYERSxDIM"`` strings
        (``"3x384"``) or ``{"layers", "dim"}`` mappings. Other keyword arguments
        are the :class:`BaseEmbedding` settings (``callback_manager``,
        ``num_workers``, ``embeddings_cache``, ``rate_limiter``); unknown ones
        raise a validation error.
        """
        encoder = resolve_encoder(encoder, model_name)
        text_tier = check_tier(encoder, to_tier(tier, "tier") or encoder.full_tier, "tier")
        query = check_tier(encoder, to_tier(query_tier, "query_tier") or text_tier, "query_tier")
        if query.dim != text_tier.dim:
            raise ValueError(
                f"query_tier {query.key} keeps {query.dim} dimensions but tier {text_tier.key} keeps {text_tier.dim}; "
                "query and document vectors must have the same width, so give both tiers the same dim"
            )

        super().__init__(
            model_name=encoder.name,
            tier=text_tier,
            query_tier=query,
            embed_batch_size=embed_batch_size,
            **kwargs,
        )
        self._encoder = encoder
        # Imported here because aegis_router.index imports torch.
        from aegis_router.index import DOCUMENT_PROMPT, QUERY_PROMPT

        prompts = encoder.sentence_config.prompts
        self._query_prompt = QUERY_PROMPT if QUERY_PROMPT in prompts else None
        self._document_prompt = DOCUMENT_PROMPT if DOCUMENT_PROMPT in prompts else None

    @classmethod
    def class_name(cls) -> str:
        return "AegisEmbedding"

    @property
    def encoder(self) -> Encoder:
        """The loaded aegis-router encoder, for building a selector or a router on the same weights."""
        return self._encoder

    def __getstate__(self) -> dict[str, Any]:
        # The weights are left out, because BaseComponent.__setstate__ calls
        # __init__ with the fields, which loads the model again by model_name.
        # Skipping BaseComponent.__getstate__ also avoids its trial pickling of
        # every attribute, which would serialise the whole model just to test it.
        state = BaseModel.__getstate__(self)
        private = dict(state.get("__pydantic_private__") or {})
        private.pop("_encoder", None)
        state["__pydantic_private__"] = private
        return state

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_tier, self._query_prompt)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], self.tier, self._document_prompt)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, self.tier, self._document_prompt)

    # The async methods run the same encoding in a worker thread, so a long
    # batch does not block the event loop.
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _embed(self, texts: list[str], tier: Tier, prompt_name: str | None) -> list[Embedding]:
        # BaseEmbedding already cuts batches of embed_batch_size texts; passing
        # the same size to the encoder keeps each call to one forward pass.
        vectors = self._encoder.encode(
            list(texts), tier, batch_size=self.embed_batch_size, prompt_name=prompt_name, show_progress=False
        )
        return vectors.tolist()
