"""The cascaded router: a cheap fast-tier pass, and the full tier only when the fast pass is unsure.

For each task the router embeds the task at the fast tier, scores every tool
(a tool's score is the best cosine among its description and examples) and
looks at the margin between the best and the second-best tool. A margin below
the threshold, or a best score below the fast floor, escalates: the encoder
resumes from the fast tier's hidden state to full depth, and the full tier
decides. When the full tier's best score is below ``min_score`` the answer is
"no tool fits" (``tool is None``).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import Catalogue, Tool
from .encoder import Encoder
from .index import MANIFEST, QUERY_PROMPT, Index, Thresholds
from .tiers import Tier, profile_for

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 5


@dataclass(frozen=True)
class Candidate:
    """A tool and its score at the tier that decided."""

    tool: Tool
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool.id, "score": round(self.score, 6)}


@dataclass(frozen=True)
class RouteResult:
    """The router's decision for one task.

    ``tool`` is None when no tool scores at least ``min_score`` at the full
    tier. ``margin`` is the gap between the best and second-best tool at the
    deciding tier (infinite with a one-tool catalogue). ``ms`` is the
    wall-clock time of the call, shared equally by the tasks of a batch.
    """

    task: str
    tool: Tool | None
    score: float
    margin: float
    tier: Tier
    escalated: bool
    candidates: tuple[Candidate, ...]
    ms: float
    cached: bool = False

    @property
    def tool_id(self) -> str | None:
        return self.tool.id if self.tool is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Convert the result to plain JSON types, with the keys the command line prints."""
        return {
            "task": self.task,
            "tool": self.tool_id,
            "score": round(self.score, 6),
            "margin": round(self.margin, 6) if math.isfinite(self.margin) else None,
            "tier": self.tier.to_dict(),
            "escalated": self.escalated,
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "ms": round(self.ms, 3),
            "cached": self.cached,
        }


@dataclass(frozen=True)
class Selection:
    """The ``k`` best tools for a task, for agents that bind several tools at once.

    ``margin`` is the gap between the k-th and the (k+1)-th tool at the
    deciding tier; a small gap means the cut was unclear, which is what
    escalates a selection.
    """

    task: str
    candidates: tuple[Candidate, ...]
    margin: float
    tier: Tier
    escalated: bool
    ms: float

    @property
    def tools(self) -> list[Tool]:
        return [candidate.tool for candidate in self.candidates]


@dataclass
class RouterStats:
    """Counters since the router was created."""

    tasks: int = 0
    escalated: int = 0
    abstained: int = 0
    cache_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tasks: int, escalated: int, abstained: int) -> None:
        with self._lock:
            self.tasks += tasks
            self.escalated += escalated
            self.abstained += abstained

    def add_cache_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.tasks if self.tasks else 0.0


class Router:
    """Routes tasks over an :class:`Index` with the cascade.

    Thresholds come, in order of precedence, from the caller's arguments, the
    index (its profile defaults, or the values calibration fitted), so a
    calibrated index is used as calibrated unless the caller overrides it.
    A router is safe to call from several threads.
    """

    def __init__(
        self,
        index: Index,
        encoder: Encoder,
        *,
        margin: float | None = None,
        min_score: float | None = None,
        fast_min_score: float | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        use_head: bool = True,
        cache_size: int = 0,
    ) -> None:
        index.check_encoder(encoder)
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (off) or more, got {cache_size}")

        self.index = index
        self.encoder = encoder
        self.candidates = candidates
        stored = index.thresholds
        self.thresholds = Thresholds(
            margin=stored.margin if margin is None else float(margin),
            min_score=stored.min_score if min_score is None else float(min_score),
            fast_min_score=stored.fast_min_score if fast_min_score is None else float(fast_min_score),
            source=stored.source if margin is None and min_score is None and fast_min_score is None else "caller",
            calibration=stored.calibration,
        )
        if self.thresholds.source != "calibration":
            logger.info("router thresholds come from %s, not from calibration on your tasks", self.thresholds.source)

        self.head = index.head if use_head else None
        calibrated_head = (stored.calibration or {}).get("head")
        current_head = index.head_info.fingerprint if self.head is not None else None
        if stored.source == "calibration" and calibrated_head != current_head:
            logger.warning(
                "the index's thresholds were calibrated %s, but the router now runs %s; "
                "run `aegis-router calibrate` again",
                f"with exit head {calibrated_head}" if calibrated_head else "without an exit head",
                f"exit head {current_head}" if current_head else "without one",
            )

        self.stats = RouterStats()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, RouteResult] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._prompt = QUERY_PROMPT if QUERY_PROMPT in encoder.sentence_config.prompts else None
        self._fast = index.fast_matrix(use_head)
        self._full = index.matrix(index.full_tier)
        self._starts = index.entry_starts

    @classmethod
    def load(cls, index_path: str | Path, encoder: Encoder | None = None, **options: Any) -> Router:
        """Load an index and the model it was built with (by the name stored in the index)."""
        index = Index.load(index_path)
        if encoder is None:
            encoder = Encoder.from_pretrained(index.model.name)
        return cls(index, encoder, **options)

    @classmethod
    def from_catalogue(
        cls,
        catalogue: Catalogue | Sequence[Tool],
        encoder: Encoder,
        *,
        fast_tier: Tier | None = None,
        **options: Any,
    ) -> Router:
        """Build an in-memory index of ``catalogue`` with the model profile's tiers and route over it.

        Nothing is written to disk; use :func:`aegis_router.build_index` for an
        index that is kept, calibrated and reused.
        """
        profile = profile_for(encoder.name, encoder.model_type, encoder.depth, encoder.hidden_size)
        catalogue = catalogue if isinstance(catalogue, Catalogue) else Catalogue(catalogue)
        index = Index.build(
            catalogue,
            encoder,
            fast_tier=fast_tier or profile.fast,
            full_tier=profile.full_tier_for(encoder.depth, encoder.hidden_size),
            thresholds=Thresholds.from_profile(profile),
            profile=profile.name,
        )
        return cls(index, encoder, **options)

    @property
    def fast_tier(self) -> Tier:
        return self.index.fast_tier

    @property
    def full_tier(self) -> Tier:
        return self.index.full_tier

    def route(self, task: str) -> RouteResult:
        """Choose the tool for one task, or None when no tool fits.

        With ``cache_size`` set, a task seen recently (the exact same text)
        gets the earlier decision back without running the model, marked
        ``cached=True``; hits are counted in ``stats.cache_hits``.
        """
        if not self.cache_size:
            return self.route_batch([task])[0]

        started = time.perf_counter()
        with self._cache_lock:
            earlier = self._cache.get(task)
            if earlier is not None:
                self._cache.move_to_end(task)
        if earlier is not None:
            self.stats.add_cache_hit()
            return replace(earlier, ms=(time.perf_counter() - started) * 1000, cached=True)

        result = self.route_batch([task])[0]
        with self._cache_lock:
            self._cache[task] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def route_batch(self, tasks: Sequence[str]) -> list[RouteResult]:
        """Route several tasks: one fast pass for all, one resumed pass for only the unsure ones."""
        started = time.perf_counter()
        fast_scores, full_scores = self._cascade(tasks, cut=1)

        results = []
        elapsed_ms = (time.perf_counter() - started) * 1000 / len(tasks)
        for row, task in enumerate(tasks):
            escalated = row in full_scores
            scores = full_scores[row] if escalated else fast_scores[row]
            ranked = _ranking(scores, max(self.candidates, 2))
            best, second = scores[ranked[0]], (scores[ranked[1]] if len(ranked) > 1 else -math.inf)
            tool = self.index.catalogue[int(ranked[0])]
            if escalated and self.thresholds.min_score is not None and best < self.thresholds.min_score:
                tool = None
            results.append(
                RouteResult(
                    task=task,
                    tool=tool,
                    score=float(best),
                    margin=float(best - second),
                    tier=self.full_tier if escalated else self.fast_tier,
                    escalated=escalated,
                    candidates=self._candidates(scores, ranked[: self.candidates]),
                    ms=elapsed_ms,
                )
            )

        self.stats.add(len(tasks), len(full_scores), sum(result.tool is None for result in results))
        return results

    def select(self, task: str, k: int = DEFAULT_CANDIDATES) -> Selection:
        """Return the ``k`` best tools; escalate when the cut between the k-th and (k+1)-th is unclear."""
        if not 1 <= k <= len(self.index.catalogue):
            raise ValueError(f"k must be between 1 and the number of tools ({len(self.index.catalogue)}), got {k}")
        started = time.perf_counter()
        fast_scores, full_scores = self._cascade([task], cut=k)

        escalated = 0 in full_scores
        scores = full_scores[0] if escalated else fast_scores[0]
        ranked = _ranking(scores, k + 1)
        after = scores[ranked[k]] if len(ranked) > k else -math.inf
        self.stats.add(1, int(escalated), 0)
        return Selection(
            task=task,
            candidates=self._candidates(scores, ranked[:k]),
            margin=float(scores[ranked[k - 1]] - after),
            tier=self.full_tier if escalated else self.fast_tier,
            escalated=escalated,
            ms=(time.perf_counter() - started) * 1000,
        )

    def score(self, tasks: Sequence[str], tier: Tier) -> np.ndarray:
        """Score every tool for each task at one tier, with no cascade: ``(tasks, tools)`` cosines.

        At the fast tier the exit head is applied when the router uses one.
        """
        if tier == self.fast_tier and self.head is not None:
            _, state = self.encoder.encode_with_state(list(tasks), tier, prompt_name=self._prompt)
            vectors = self.head.vectors(self.encoder.pool(state), tier.dim)
            return tool_scores(vectors, self._fast, self._starts)
        vectors = self.encoder.encode(list(tasks), tier, prompt_name=self._prompt)
        return tool_scores(vectors, self.index.matrix(tier), self._starts)

    def _cascade(self, tasks: Sequence[str], cut: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Run the fast tier on all tasks and the full tier on the unsure ones.

        ``cut`` is the rank whose gap to the next rank decides: 1 for routing
        (best against second), k for selecting k tools.
        """
        vectors, state = self.encoder.encode_with_state(tasks, self.fast_tier, prompt_name=self._prompt)
        if self.head is not None:
            vectors = self.head.vectors(self.encoder.pool(state), self.fast_tier.dim)
        fast_scores = tool_scores(vectors, self._fast, self._starts)
        escalate = unsure_rows(fast_scores, cut, self.thresholds.margin, self.thresholds.fast_min_score)

        full_scores: dict[int, np.ndarray] = {}
        rows = np.flatnonzero(escalate)
        if len(rows):
            full_vectors = self.encoder.resume(state.rows(rows.tolist()), self.full_tier)
            for row, scores in zip(rows, tool_scores(full_vectors, self._full, self._starts)):
                full_scores[int(row)] = scores
        return fast_scores, full_scores

    def _candidates(self, scores: np.ndarray, ranked: np.ndarray) -> tuple[Candidate, ...]:
        catalogue = self.index.catalogue
        return tuple(Candidate(catalogue[int(i)], float(scores[i])) for i in ranked)


def unsure_rows(scores: np.ndarray, cut: int, margin: float, fast_min_score: float | None) -> np.ndarray:
    """Return a boolean mask of the rows to escalate, given ``(tasks, tools)`` fast-tier scores.

    A row escalates when the gap between its ``cut``-th and ``(cut+1)``-th best
    tool is below ``margin``, or its best score is below ``fast_min_score``.
    """
    unsure = top_gap(scores, cut) < margin
    if fast_min_score is not None:
        unsure |= scores.max(axis=1) < fast_min_score
    return unsure


def top_gap(scores: np.ndarray, cut: int = 1) -> np.ndarray:
    """Compute the gap between each row's ``cut``-th and ``(cut+1)``-th best score.

    The gap is infinite when a row has no ``(cut+1)``-th finite score. That
    happens with a small catalogue, or when candidates mask tools to ``-inf``.
    """
    if scores.shape[1] <= cut:
        return np.full(scores.shape[0], np.inf)
    top = -np.partition(-scores, cut, axis=1)[:, : cut + 1]
    top.sort(axis=1)
    with np.errstate(invalid="ignore"):
        gaps = top[:, 1] - top[:, 0]
    return np.where(np.isfinite(gaps), gaps, np.inf)


def tool_scores(vectors: np.ndarray, matrix: np.ndarray, starts: np.ndarray) -> np.ndarray:
    # One matrix product scores every entry; reduceat takes each tool's best entry
    # (entries of a tool are contiguous, starting at starts[i]).
    entry_scores = vectors @ matrix.T
    return np.maximum.reduceat(entry_scores, starts, axis=1)


def _ranking(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


@functools.lru_cache(maxsize=4)
def _cached_router(index_path: str, manifest_version: tuple[int, int] | None) -> Router:
    # manifest_version is only part of the cache key: a save swaps in a new folder, so its
    # manifest has a new inode and mtime, and a rebuilt index is loaded again.
    return Router.load(index_path)


def route(task: str, index: str | Path | Router) -> RouteResult:
    """Route one task with the index at ``index`` (a folder) or with a ready :class:`Router`.

    Routers loaded from a path are kept (up to 4), so repeated calls do not
    reload the model.
    """
    if isinstance(index, Router):
        return index.route(task)
    path = Path(index).resolve()
    try:
        stat = (path / MANIFEST).stat()
        version = (stat.st_ino, stat.st_mtime_ns)
    except FileNotFoundError:
        version = None  # Router.load raises IndexFormatError with the details
    return _cached_router(str(path), version).route(task)
