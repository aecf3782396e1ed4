"""Fitting the cascade's thresholds from data instead of guessing them.

Two modes:

- ``labels``: the cascade's accuracy may be at most ``tolerance`` points below
  the full tier's (out-of-scope queries count as correct when the router
  abstains);
- ``agreement``: no labels needed; the cascade must make the full tier's own
  decision on at least ``agreement`` of the queries, so any stream of real
  tasks can calibrate.

Within that constraint the fit picks the escalation margin and fast-tier score
floor that escalate the fewest queries. With labelled out-of-scope queries it
first fits ``min_score``, the full-tier score below which no tool fits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from .errors import AegisRouterError
from .evaluation import ScoreTable, tier_decisions
from .index import Thresholds
from .router import top_gap

logger = logging.getLogger(__name__)

CalibrationMode = Literal["labels", "agreement"]
MARGIN_STEPS = 200
FEW_QUERIES = 200
FLOOR_STEPS = 40


class CalibrationError(AegisRouterError, ValueError):
    """The data cannot support the requested calibration (no queries, no labels, unreachable target)."""


@dataclass(frozen=True)
class TradeOff:
    """One point of the sweep: thresholds, the share of queries escalated, and the quality measured."""

    margin: float
    fast_min_score: float | None
    escalation_rate: float
    quality: float


@dataclass(frozen=True)
class Calibration:
    """The fitted thresholds, the point chosen and the data they came from."""

    thresholds: Thresholds
    chosen: TradeOff
    full_quality: float
    target: float
    mode: CalibrationMode
    curve: tuple[TradeOff, ...]

    def summary(self) -> str:
        measure = "accuracy" if self.mode == "labels" else "agreement with the full tier"
        floor = self.thresholds.fast_min_score
        return (
            f"margin {self.thresholds.margin:.4f}, fast floor {'off' if floor is None else f'{floor:.4f}'}, "
            f"min_score {'off' if self.thresholds.min_score is None else f'{self.thresholds.min_score:.4f}'}: "
            f"{measure} {self.chosen.quality:.2%} (target {self.target:.2%}, full tier {self.full_quality:.2%}) "
            f"with {self.chosen.escalation_rate:.1%} of queries escalated"
        )


def calibrate(
    table: ScoreTable,
    *,
    mode: CalibrationMode | None = None,
    tolerance: float = 0.5,
    agreement: float = 0.99,
    min_score: float | None = None,
    source: str = "",
) -> Calibration:
    """Fit margin, fast floor and (with out-of-scope labels) ``min_score`` on a score table.

    ``tolerance`` is in accuracy points (0.5 means half a percentage point).
    ``min_score`` is the full-tier floor to keep when it cannot be fitted
    (no out-of-scope queries, or agreement mode).
    """
    if len(table.queries) < FEW_QUERIES:
        logger.warning(
            "calibrating on %d queries: thresholds fitted on fewer than %d are noisy; give more real tasks",
            len(table.queries),
            FEW_QUERIES,
        )
    labelled = all(query.gold is not None for query in table.queries)
    mode = mode or ("labels" if labelled else "agreement")
    if mode == "labels" and not labelled:
        raise CalibrationError("calibration with labels needs a 'gold' list on every query; use mode 'agreement'")
    if not 0 < agreement <= 1:
        raise CalibrationError(f"agreement must be in (0, 1], got {agreement}")
    if tolerance < 0:
        raise CalibrationError(f"tolerance must be at least 0 points, got {tolerance}")

    gold = table.gold_mask() if mode == "labels" else None
    out_of_scope = (~gold.any(axis=1)) if gold is not None else np.zeros(len(table.queries), dtype=bool)
    if mode == "labels" and out_of_scope.any():
        min_score = _fit_min_score(table.full, gold, out_of_scope)

    fast_choice = table.fast.argmax(axis=1)
    full_choice = tier_decisions(table.full, min_score)
    if mode == "labels":
        fast_correct = _correct(fast_choice, gold, out_of_scope)
        full_correct = _correct(full_choice, gold, out_of_scope)
        full_quality = float(full_correct.mean())
        target = full_quality - tolerance / 100
    else:
        fast_correct = fast_choice == full_choice
        full_correct = np.ones(len(full_choice), dtype=bool)
        full_quality = 1.0
        target = agreement

    gaps = top_gap(table.fast)
    best = table.fast.max(axis=1)
    uses_floor = min_score is not None
    curve = _sweep(gaps, best, fast_correct, full_correct, uses_floor)
    feasible = [point for point in curve if point.quality >= target - 1e-12]
    if not feasible:
        raise CalibrationError(f"no threshold reaches the target {target:.2%}; the full tier alone reaches {full_quality:.2%}")
    chosen = min(feasible, key=lambda point: (point.escalation_rate, -point.quality))

    thresholds = Thresholds(
        margin=chosen.margin,
        min_score=min_score,
        fast_min_score=chosen.fast_min_score,
        source="calibration",
        calibration={
            "mode": mode,
            "target": round(target, 6),
            "tolerance_points": tolerance if mode == "labels" else None,
            "agreement": agreement if mode == "agreement" else None,
            "queries": len(table.queries),
            "out_of_scope": int(out_of_scope.sum()),
            "data": source,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "quality": round(chosen.quality, 6),
            "full_quality": round(full_quality, 6),
            "escalation_rate": round(chosen.escalation_rate, 6),
            "head": table.head,
        },
    )
    margin_curve = tuple(point for point in curve if point.fast_min_score == chosen.fast_min_score)
    return Calibration(thresholds, chosen, full_quality, target, mode, margin_curve)


def _sweep(gaps, best, fast_correct, full_correct, uses_floor: bool) -> list[TradeOff]:
    finite_gaps = gaps[np.isfinite(gaps)]
    margins = np.unique(np.concatenate([[0.0], np.quantile(finite_gaps, np.linspace(0, 1, MARGIN_STEPS + 1))]))
    # A margin just above the largest gap escalates every row with a second tool.
    margins = np.append(margins, np.nextafter(margins[-1], np.inf))
    floors: list[float | None] = [None]
    if uses_floor:
        floors += [float(value) for value in np.unique(np.quantile(best, np.linspace(0, 1, FLOOR_STEPS + 1)))]

    curve = []
    for floor in floors:
        low = best < floor if floor is not None else np.zeros(len(best), dtype=bool)
        for margin in margins:
            escalated = (gaps < margin) | low
            quality = np.where(escalated, full_correct, fast_correct).mean()
            curve.append(TradeOff(float(margin), floor, float(escalated.mean()), float(quality)))
    return curve


def _fit_min_score(full: np.ndarray, gold: np.ndarray, out_of_scope: np.ndarray) -> float:
    """Find the full-tier floor that maximises accuracy over in-scope and out-of-scope queries together."""
    best_scores = full.max(axis=1)
    right_tool = gold[np.arange(len(gold)), full.argmax(axis=1)]
    candidates = np.unique(np.quantile(best_scores, np.linspace(0, 1, 401)))
    accuracy = [np.where(best_scores < floor, out_of_scope, right_tool).mean() for floor in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def _correct(choice: np.ndarray, gold: np.ndarray, out_of_scope: np.ndarray) -> np.ndarray:
    picked = choice >= 0
    correct = np.zeros(len(choice), dtype=bool)
    correct[picked] = gold[picked, choice[picked]]
    return np.where(out_of_scope, ~picked, correct)


def describe(calibration: Calibration) -> dict[str, Any]:
    """Convert the calibration to plain JSON types."""
    return {
        "thresholds": calibration.thresholds.to_dict(),
        "chosen": calibration.chosen.__dict__,
        "full_quality": calibration.full_quality,
        "target": calibration.target,
        "mode": calibration.mode,
    }
