"""LangChain :class:`~langchain_core.embeddings.Embeddings` computed by an aegis-router encoder at a fixed tier."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegis_router import Tier
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from ._encoders import check_tier_fits, load_encoder

if TYPE_CHECKING:
    from aegis_router import Encoder

logger = logging.getLogger(__name__)


class AegisEmbeddings(BaseModel, Embeddings):
    """Embed texts with an aegis-router encoder at one (layers, dim) tier.

    A tier runs only ``layers`` of the model's layers and keeps the first
    ``dim`` dimensions of the pooled vector, so a shallow or narrow tier is
    cheaper than the full model. Vectors are L2-normalised, so a dot product is
    their cosine similarity.

    The model is loaded, and both tiers are checked against it, when the object
    is built. Objects built with the same ``model`` and ``device`` share one
    loaded encoder.

    Example::

        embeddings = AegisEmbeddings(model="demo", tier="6x384")
        vector = embeddings.embed_query("reset my password")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="demo",
        description="Local sentence-transformers folder or Hugging Face hub id; 'demo' is the bundled all-MiniLM-L6-v2.",
    )
    tier: Tier | None = Field(
        default=None,
        description="Tier for documents, and for queries unless query_tier is set; a Tier, 'LAYERSxDIM' or "
        "{'layers': ..., 'dim': ...}. None: all layers, full width.",
    )
    query_tier: Tier | None = Field(
        default=None,
        description="Tier for embed_query. None: the same as tier. Its dim must equal the document tier's dim.",
    )
    batch_size: int = Field(default=32, ge=1, description="Texts per forward pass in embed_documents.")
    device: str | None = Field(default=None, description="Torch device of the model, such as 'cuda:0'. None: the CPU.")
    show_progress: bool = Field(default=False, description="Show a progress bar while embedding documents.")

    _encoder: Encoder = PrivateAttr()
    _document_tier: Tier = PrivateAttr()
    _query_tier: Tier = PrivateAttr()
    _document_prompt: str | None = PrivateAttr(default=None)
    _query_prompt: str | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Loading and the tier checks run here rather than in a pydantic
        # validator so that their own errors (TierError, FileNotFoundError,
        # MissingExtraError) reach the caller instead of a ValidationError.
        encoder = load_encoder(self.model, self.device)
        document_tier = check_tier_fits(encoder, self.tier or encoder.full_tier, "tier")
        query_tier = check_tier_fits(encoder, self.query_tier or document_tier, "query_tier")
        if query_tier.dim != document_tier.dim:
            raise ValueError(
                f"query_tier {query_tier.key} keeps {query_tier.dim} dimensions but the document tier "
                f"{document_tier.key} keeps {document_tier.dim}; a vector store compares query and document "
                f"vectors, so set query_tier to {query_tier.layers}x{document_tier.dim}"
            )
        if query_tier.layers != document_tier.layers:
            # NOTE: a shallow query against deep documents only matches well on a
            # model trained for early exits; the demo model was not.
            logger.info(
                "queries run %d layers and documents %d layers of %s",
                query_tier.layers,
                document_tier.layers,
                encoder.name,
            )

        # Imported here because aegis_router.index imports torch, which a model load does anyway.
        from aegis_router.index import DOCUMENT_PROMPT, QUERY_PROMPT

        prompts = encoder.sentence_config.prompts
        self._encoder = encoder
        self._document_tier = document_tier
        self._query_tier = query_tier
        self._document_prompt = DOCUMENT_PROMPT if DOCUMENT_PROMPT in prompts else None
        self._query_prompt = QUERY_PROMPT if QUERY_PROMPT in prompts else None

    @field_validator("model", mode="before")
    @classmethod
    def _model_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("tier", "query_tier", mode="before")
    @classmethod
    def _parse_tier(cls, value: Any) -> Any:
        return Tier.parse(value) if isinstance(value, str) else value

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder, shared with other objects that use the same model and device."""
        return self._encoder

    @property
    def resolved_tier(self) -> Tier:
        """The tier ``embed_documents`` runs at: ``tier``, or the model's full tier when ``tier`` is None."""
        return self._document_tier

    @property
    def resolved_query_tier(self) -> Tier:
        """The tier ``embed_query`` runs at: ``query_tier``, or the document tier when ``query_tier`` is None."""
        return self._query_tier

    @property
    def dimensions(self) -> int:
        """The length of every vector this object returns."""
        return self._document_tier.dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents at the document tier, ``batch_size`` texts per forward pass.

        An empty list returns an empty list. Blank texts raise ``ValueError``
        because the encoder has nothing to embed for them.
        """
        items = _check_texts(texts)
        if not items:
            return []
        vectors = self._encoder.encode(
            items,
            self._document_tier,
            batch_size=self.batch_size,
            prompt_name=self._document_prompt,
            show_progress=self.show_progress,
        )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query at the query tier."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text is empty or whitespace only; pass the query to embed")
        vector = self._encoder.encode(text, self._query_tier, prompt_name=self._query_prompt)
        return vector.tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents in the default thread pool, so the event loop keeps running meanwhile.

        The encoder is thread-safe and torch releases the GIL inside its
        tensor operations, so several calls can run at the same time.
        """
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed one query in the default thread pool, so the event loop keeps running meanwhile."""
        return await run_in_executor(None, self.embed_query, text)


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A lone string is a Sequence too, but embedding it character by character is never what was meant.
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}; use embed_query for one text")
    items = list(texts)

    wrong_types = [f"{i} ({type(text).__name__})" for i, text in enumerate(items) if not isinstance(text, str)]
    if wrong_types:
        raise TypeError(f"texts must all be strings; these positions are not: {', '.join(wrong_types[:10])}")
    blank = [str(i) for i, text in enumerate(items) if not text.strip()]
    if blank:
        raise ValueError(
            f"texts at positions {', '.join(blank[:10])} are empty or whitespace only; "
            "drop them or replace them with text before embedding"
        )
    return items
