"""Building or updating an index folder from catalogue files: the work behind ``aegis-router index``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .catalogue import Catalogue, CatalogueFormat
from .encoder import Encoder
from .errors import AegisRouterError
from .index import MANIFEST, Index, Thresholds
from .tiers import Tier, profile_for

logger = logging.getLogger(__name__)


def build_index(
    catalogue_paths: Sequence[str | Path],
    output: str | Path,
    *,
    model: str | Path | Encoder = "demo",
    fast_tier: Tier | None = None,
    catalogue_format: CatalogueFormat = "auto",
    batch_size: int = 32,
    device: str | None = None,
    reuse: bool = True,
) -> Index:
    """Load catalogues, embed them at the model profile's tiers and write the index to ``output``.

    When ``output`` already holds an index of the same model and tiers, tools
    whose text did not change keep their vectors, and its thresholds are
    kept (calibrated ones included; recalibrate if the catalogue changed much).
    """
    catalogue = Catalogue.load(*catalogue_paths, format=catalogue_format)
    encoder = model if isinstance(model, Encoder) else Encoder.from_pretrained(model, device=device)
    profile = profile_for(encoder.name, encoder.model_type, encoder.depth, encoder.hidden_size)
    fast_tier = fast_tier or profile.fast
    full_tier = profile.full_tier_for(encoder.depth, encoder.hidden_size)

    previous = None
    output = Path(output)
    if reuse and (output / MANIFEST).is_file():
        try:
            previous = Index.load(output)
        except AegisRouterError as exc:
            logger.warning("cannot reuse the index at %s (%s); embedding every tool", output, exc)

    thresholds = Thresholds(
        margin=profile.margin, min_score=profile.min_score, source=f"profile {profile.name}"
    )
    if previous is not None and previous.model.fingerprint == encoder.fingerprint and previous.fast_tier == fast_tier:
        thresholds = previous.thresholds

    index = Index.build(
        catalogue,
        encoder,
        fast_tier=fast_tier,
        full_tier=full_tier,
        thresholds=thresholds,
        profile=profile.name,
        previous=previous,
        batch_size=batch_size,
    )
    index.save(output)
    return index
