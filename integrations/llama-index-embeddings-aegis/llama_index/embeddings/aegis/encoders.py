"""Loading and sharing the aegis-router encoder behind the LlamaIndex components.

An embedding model, a selector and a tool retriever built with the same
``model_name`` share one loaded :class:`aegis_router.Encoder`, so the weights
are read once per process. Sharing is safe because encoding is thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aegis_router import Tier, TierError

if TYPE_CHECKING:
    from aegis_router import Encoder

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "demo"

_lock = threading.Lock()
_loaded: dict[str, Encoder] = {}


def shared_encoder(model_name: str) -> Encoder:
    """Load ``model_name`` on first use and return the same encoder on every later call."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(
            f"model_name must be a non-empty string, got {model_name!r}; use 'demo' for the bundled "
            "all-MiniLM-L6-v2, a local sentence-transformers folder or a hub id"
        )

    with _lock:
        encoder = _loaded.get(model_name)
        if encoder is None:
            from aegis_router import Encoder

            logger.info("loading aegis-router model %s", model_name)
            encoder = Encoder.from_pretrained(model_name)
            _loaded[model_name] = encoder
    return encoder


def resolve_encoder(encoder: Encoder | None, model_name: str | None) -> Encoder:
    """Return ``encoder`` when given, else the shared encoder of ``model_name`` (default ``"demo"``)."""
    if encoder is None:
        return shared_encoder(DEFAULT_MODEL if model_name is None else model_name)

    from aegis_router import Encoder

    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"encoder must be an aegis_router.Encoder, got {type(encoder).__name__}; "
            "load one with Encoder.from_pretrained(...) or pass model_name instead"
        )
    if model_name is not None and model_name != encoder.name:
        raise ValueError(
            f"model_name {model_name!r} does not match the given encoder, which loaded {encoder.name!r}; "
            "pass only one of them"
        )
    return encoder


def to_tier(value: Any, option: str) -> Tier | None:
    """Convert a tier given as a :class:`Tier`, ``"LAYERSxDIM"`` or ``{"layers", "dim"}`` mapping.

    ``option`` is the argument's name, used in error messages. None stays None.
    """
    if value is None or isinstance(value, Tier):
        return value
    if isinstance(value, str):
        try:
            return Tier.parse(value)
        except TierError as exc:
            raise TierError(f"{option}: {exc}") from None
    if isinstance(value, Mapping) and set(value) == {"layers", "dim"}:
        return Tier(layers=value["layers"], dim=value["dim"])
    raise TypeError(
        f"{option} must be a Tier, a 'LAYERSxDIM' string such as '6x384' or a mapping with 'layers' and 'dim', "
        f"got {value!r} ({type(value).__name__})"
    )


def check_tier(encoder: Encoder, tier: Tier, option: str) -> Tier:
    """Return ``tier`` if ``encoder`` can run it, else raise :class:`TierError` naming the option and the limit."""
    try:
        return encoder.check_tier(tier)
    except TierError as exc:
        raise TierError(f"{option}: {exc}; use at most {encoder.full_tier.key}") from None
