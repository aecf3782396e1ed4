"""A process-wide cache of loaded encoders, shared by the embeddings and the tool selector.

LangChain code tends to build many small objects, such as one embeddings
object per vector store or per test. Each load of a model takes seconds and
memory for its full weights, so each (model, device) pair is loaded once and
reused.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING

from aegis_router import Tier, TierError

if TYPE_CHECKING:
    from aegis_router import Encoder

logger = logging.getLogger(__name__)

# The maximum number of encoders kept, dropping the least recently used first.
# An object that already has an encoder keeps it alive whatever the cache drops.
MAX_CACHED_ENCODERS = 4

_load_lock = threading.Lock()


def load_encoder(model: str | os.PathLike[str] | Encoder, device: str | None = None) -> Encoder:
    """Return a loaded :class:`aegis_router.Encoder` for a model id or path, loading it on first use.

    An ``Encoder`` instance is returned as it is, so callers that already hold
    one can share it. Loading imports torch.
    """
    from aegis_router import Encoder

    if isinstance(model, Encoder):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a model id, a path or an aegis_router.Encoder, got {type(model).__name__}; "
            "pass 'demo' for the bundled demo model"
        )
    # The lock makes concurrent first uses of a model wait for one load instead
    # of each loading its own copy.
    with _load_lock:
        return _load_cached(os.fspath(model), device)


@functools.lru_cache(maxsize=MAX_CACHED_ENCODERS)
def _load_cached(model: str, device: str | None) -> Encoder:
    from aegis_router import Encoder

    logger.info("loading encoder %s (device %s)", model, device or "cpu")
    return Encoder.from_pretrained(model, device=device)


def check_tier_fits(encoder: Encoder, tier: Tier, field: str) -> Tier:
    """Return ``tier`` if ``encoder`` can run it, else raise :class:`TierError` naming ``field`` and the model's limits."""
    try:
        return encoder.check_tier(tier)
    except TierError as exc:
        raise TierError(
            f"{field} {tier.key} does not fit the model: {exc}; use at most "
            f"{encoder.depth} layers and {encoder.hidden_size} dimensions (the full tier is {encoder.full_tier.key})"
        ) from exc
