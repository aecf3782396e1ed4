"""Building or updating an index folder from catalogue files: the work behind ``aegis-router index``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .catalogue import Catalogue, CatalogueFormat
from .encoder import Encoder
from .errors import AegisRouterError
from .heads import DEFAULT_EPOCHS, DEFAULT_WIDTH, train_head
from .index import MANIFEST, Index, Thresholds, entry_pooled_states, entry_texts
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

    When ``output`` already contains an index of the same model and tiers, tools
    whose text did not change keep their vectors, and its thresholds are
    kept if they were calibrated (recalibrate if the catalogue changed much).
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

    thresholds = Thresholds.from_profile(profile)
    # Calibrated thresholds carry over to a rebuild; profile defaults are taken
    # afresh, so a changed profile reaches existing indexes.
    same_model = previous is not None and previous.model.fingerprint == encoder.fingerprint
    if same_model and previous.fast_tier == fast_tier and previous.thresholds.source == "calibration":
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


def train_index_head(
    index: Index,
    encoder: Encoder,
    texts: Sequence[str] = (),
    *,
    include_catalogue: bool = True,
    width: int = DEFAULT_WIDTH,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    show_progress: bool | None = None,
) -> Index:
    """Train an exit head for ``index`` on ``texts`` plus the catalogue's own texts, and attach it.

    Held-out agreement is measured as routing agreement over this index's
    tools: the share of held-out texts whose best tool through the head equals
    the full tier's best tool. The returned index must be saved, and its
    thresholds calibrated again, because the fast tier's scores changed.
    """
    index.check_encoder(encoder)
    catalogue_texts = [text for text, _ in entry_texts(index.catalogue)] if include_catalogue else []
    all_texts = [*catalogue_texts, *texts]
    sources = {"catalogue": len(catalogue_texts), "given": len(texts)}

    tools_pooled = entry_pooled_states(index.catalogue, encoder, index.fast_tier)
    trained = train_head(
        encoder,
        all_texts,
        index.fast_tier,
        index.full_tier,
        tools_full=index.matrix(index.full_tier),
        tools_pooled=tools_pooled,
        tool_starts=index.entry_starts,
        width=width,
        epochs=epochs,
        seed=seed,
        show_progress=show_progress,
        sources=sources,
    )
    logger.info("exit head trained: held-out agreement %.4f", trained.info.training["agreement"])
    return index.with_head(trained.head, trained.info, encoder)
