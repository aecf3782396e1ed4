"""Drawing the cascade's trade-off between accuracy and escalation rate (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MissingExtraError
from .evaluation import ScoreTable, cascade_decisions, metrics
from .index import Thresholds
from .router import top_gap

POINTS = 60


def plot_trade_off(table: ScoreTable, thresholds: Thresholds, path: str | Path) -> Path:
    """Plot in-scope top-1 against escalation rate over the range of margins, marking the current margin."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("plots need matplotlib: pip install 'aegis-router[plot]'") from exc

    gaps = top_gap(table.fast)
    finite = gaps[np.isfinite(gaps)]
    margins = np.unique(np.concatenate([[0.0], np.quantile(finite, np.linspace(0, 1, POINTS)), [finite.max() + 1e-6]]))

    def point(margin: float) -> tuple[float, float]:
        chosen, scores, escalated = cascade_decisions(table, margin, thresholds.min_score, thresholds.fast_min_score)
        return float(escalated.mean()), metrics(table, chosen, scores)["top1"]

    curve = np.array([point(margin) for margin in margins])
    current = point(thresholds.margin)

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(curve[:, 0] * 100, curve[:, 1] * 100, marker=".", label="cascade over margins")
    axes.scatter([current[0] * 100], [current[1] * 100], color="red", zorder=3, label=f"margin {thresholds.margin:.3f}")
    axes.set_xlabel("escalated to the full tier (%)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"Cascade trade-off on {len(table.queries)} queries")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
