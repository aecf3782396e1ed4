"""Tiers (how many layers to run, how many dimensions to keep) and model profiles.

A 2D Matryoshka encoder can stop after any number of layers and its vectors can
be cut to any prefix width. A :class:`Tier` names one such (layers, dim) point.
A :class:`ModelProfile` says which tiers the router uses for a given model and
which thresholds apply until calibration replaces them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import TierError

_TIER_PATTERN = re.compile(r"^\s*(\d+)\s*[x/:]\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Tier:
    """A point of the encoder's 2D Matryoshka grid: run ``layers`` layers, keep ``dim`` dimensions.

    A tier is validated against a model only when it is used with one
    (:meth:`aegis_router.Encoder.check_tier`), because the same tier can be
    valid for one model and too deep for another.
    """

    layers: int
    dim: int

    def __post_init__(self) -> None:
        for name in ("layers", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Tier.{name} must be an int, got {value!r} ({type(value).__name__})")
            if value < 1:
                raise TierError(f"Tier.{name} must be at least 1, got {value}")

    @property
    def key(self) -> str:
        """The tier as ``"LAYERSxDIM"``, the form used in index files and on the command line."""
        return f"{self.layers}x{self.dim}"

    @classmethod
    def parse(cls, text: str) -> Tier:
        """Parse ``"6x64"`` (also ``"6/64"`` or ``"6:64"``) into a tier."""
        match = _TIER_PATTERN.match(text)
        if match is None:
            raise TierError(f"invalid tier {text!r}: expected LAYERSxDIM, for example '6x64'")
        return cls(int(match.group(1)), int(match.group(2)))

    def to_dict(self) -> dict[str, int]:
        return {"layers": self.layers, "dim": self.dim}

    def __str__(self) -> str:
        unit = "layer" if self.layers == 1 else "layers"
        return f"{self.layers} {unit}/{self.dim}d"


@dataclass(frozen=True)
class ModelProfile:
    """The tiers and default thresholds the router uses for one model.

    ``margin`` is the smallest gap between the best and the second-best tool at
    the fast tier that the router trusts without escalating. ``min_score`` is the
    full-tier cosine below which the router returns "no tool fits". Both are
    defaults only: a calibrated index overrides them, and so does the caller.
    ``calibrated_on`` says where the defaults were measured, or is empty when
    they are placeholders that calibration must replace.
    """

    name: str
    fast: Tier
    full: Tier
    margin: float
    min_score: float
    matryoshka_dims: tuple[int, ...] = ()
    calibrated_on: str = ""
    notes: str = ""

    def full_tier_for(self, depth: int, hidden_size: int) -> Tier:
        """Return the profile's full tier, or the model's own depth and width when the model is smaller."""
        if self.full.layers <= depth and self.full.dim <= hidden_size:
            return self.full
        return Tier(depth, hidden_size)


# aegis-embed: 22-layer ModernBERT, 768 dims, trained for exits at any depth and
# widths 768/512/256/128/64.
# NOTE: its thresholds are placeholders until someone with the weights runs
# `aegis-router calibrate`; they are set to escalate often rather than to trust a
# weak shallow pass.
AEGIS_EMBED = ModelProfile(
    name="aegis-embed",
    fast=Tier(6, 64),
    full=Tier(22, 768),
    margin=0.10,
    min_score=0.30,
    matryoshka_dims=(768, 512, 256, 128, 64),
    notes="thresholds not calibrated: run `aegis-router calibrate` on your own tasks",
)

# all-MiniLM-L6-v2, the bundled demo model: 6 layers, 384 dims, English only and
# never trained for early exits, so its 1-layer pass is weak and escalates often.
# margin: `aegis-router calibrate --mode agreement` (0.99) on 3,000 BANKING77
# training queries, 10 examples per intent in the index. min_score: fitted with
# labels on the MetaTool dev set's 151 out-of-scope queries over its 199 tool
# descriptions (CLINC150's intents with examples gave 0.36; scores run higher
# when tools have example utterances, so calibrate on your own catalogue).
DEMO_MINILM = ModelProfile(
    name="all-MiniLM-L6-v2",
    fast=Tier(1, 384),
    full=Tier(6, 384),
    margin=0.058,
    min_score=0.23,
    matryoshka_dims=(),
    calibrated_on="BANKING77 train (margin), MetaTool dev out-of-scope queries (min_score)",
    notes="English only; not trained for early exits or Matryoshka widths",
)


def generic_profile(depth: int, hidden_size: int) -> ModelProfile:
    """Build a profile for a model without a known one: a third of the layers, full width.

    NOTE: the thresholds of a generic profile are placeholders; calibrate the
    index before trusting the escalation rate it gives.
    """
    return ModelProfile(
        name="generic",
        fast=Tier(max(1, depth // 3), hidden_size),
        full=Tier(depth, hidden_size),
        margin=0.10,
        min_score=0.30,
        notes="no profile known for this model: thresholds are placeholders until calibrated",
    )


def profile_for(model_name: str, model_type: str, depth: int, hidden_size: int) -> ModelProfile:
    """Pick the profile of a known model by name or shape, else a generic one."""
    lowered = model_name.lower()
    if "aegis-embed" in lowered or (model_type == "modernbert" and depth == 22 and hidden_size == 768):
        return AEGIS_EMBED
    if "minilm-l6" in lowered or "minilm_l6" in lowered or (model_type == "bert" and depth == 6 and hidden_size == 384):
        return DEMO_MINILM
    return generic_profile(depth, hidden_size)
