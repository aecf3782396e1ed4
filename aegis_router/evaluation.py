"""Measuring a router on labelled queries: the fast tier, the full tier and the cascade.

The fast-tier and full-tier tool scores of every query are computed once
(:class:`ScoreTable`); the cascade at any threshold is then a choice per row
between the two, which equals what :class:`aegis_router.Router` returns because
a resumed pass equals a fresh full-tier encode. That makes sweeping thresholds
for calibration and plots free of further model calls.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import AegisRouterError
from .index import QUERY_PROMPT
from .router import Router, tool_scores, unsure_rows

logger = logging.getLogger(__name__)

RECALL_KS = (1, 3, 5, 10)


class QueryFileError(AegisRouterError, ValueError):
    """A queries file is missing, malformed, or names tools the index does not have."""


class Query(BaseModel):
    """One query: ``gold == []`` means no tool fits; ``gold is None`` means unlabelled."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str = Field(min_length=1)
    gold: tuple[str, ...] | None = None
    lang: str | None = None
    candidates: tuple[str, ...] | None = None


def load_queries(path: str | Path, *, split: str | None = None, limit: int | None = None) -> list[Query]:
    """Read queries: JSONL of ``{"text", "gold"?, "lang"?, "candidates"?}``, or plain text, one task per line.

    A ``.txt`` file gives unlabelled queries, enough for label-free
    calibration. ``split`` keeps only JSONL rows whose ``split`` field equals
    it; other extra fields are allowed because public benchmark files carry
    many.
    """
    path = Path(path)
    if not path.is_file():
        raise QueryFileError(f"queries file {str(path)!r} does not exist")
    plain_text = path.suffix.lower() == ".txt"

    queries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = {"text": line.strip()} if plain_text else json.loads(line)
            if split is not None and row.get("split") != split:
                continue
            queries.append(Query(**row))
        except json.JSONDecodeError as exc:
            raise QueryFileError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        except ValidationError as exc:
            problems = "; ".join(f"field {'.'.join(map(str, e['loc']))!r}: {e['msg']}" for e in exc.errors())
            raise QueryFileError(
                f"{path}: line {number} is not a valid query ({problems}); expected "
                '{"text": "...", "gold": ["tool id", ...]}'
            ) from None
        except TypeError as exc:
            raise QueryFileError(f"{path}: line {number} is not a JSON object ({exc})") from None
        if limit is not None and len(queries) >= limit:
            break

    if not queries:
        raise QueryFileError(f"{path} has no queries" + (f" in split {split!r}" if split else ""))
    return queries


@dataclass(frozen=True)
class ScoreTable:
    """Fast-tier and full-tier tool scores, ``(queries, tools)``, for a list of queries.

    ``fast`` contains the scores the router decides with, through its exit
    head when it uses one. ``fast_without_head`` contains the raw fast tier's
    scores when there is a head, else None. Tools outside a query's ``candidates``
    score ``-inf``, so they are never chosen and do not count in margins.
    """

    queries: tuple[Query, ...]
    tool_ids: tuple[str, ...]
    fast: np.ndarray
    full: np.ndarray
    fast_without_head: np.ndarray | None = None
    head: str | None = None

    @classmethod
    def compute(cls, router: Router, queries: Sequence[Query], *, batch_size: int = 64, show_progress: bool | None = None) -> ScoreTable:
        """Embed every query once to full depth, taking the fast tier on the way, and score all tools."""
        index = router.index
        tool_ids = tuple(index.catalogue.ids)
        known = set(tool_ids)
        for number, query in enumerate(queries):
            unknown = [tool for tool in (*(query.gold or ()), *(query.candidates or ())) if tool not in known]
            if unknown:
                raise QueryFileError(
                    f"query {number} ({query.text[:40]!r}) names tools not in the index: {', '.join(unknown[:5])}"
                )

        fast_tier, full_tier = index.fast_tier, index.full_tier
        fast_vectors = np.empty((len(queries), fast_tier.dim), dtype=np.float32)
        head_vectors = np.empty_like(fast_vectors) if router.head is not None else None
        full_vectors = np.empty((len(queries), full_tier.dim), dtype=np.float32)
        prompt = QUERY_PROMPT if QUERY_PROMPT in router.encoder.sentence_config.prompts else None
        walk = router.encoder.walk(
            [query.text for query in queries],
            [fast_tier.layers, full_tier.layers],
            batch_size=batch_size,
            prompt_name=prompt,
            show_progress=show_progress,
        )
        for rows, state in walk:
            if state.layers == fast_tier.layers:
                fast_vectors[rows] = router.encoder.vectors(state, fast_tier.dim)
                if head_vectors is not None:
                    head_vectors[rows] = router.head.vectors(router.encoder.pool(state), fast_tier.dim)
            if state.layers == full_tier.layers:
                full_vectors[rows] = router.encoder.vectors(state, full_tier.dim)

        starts = index.entry_starts
        raw_fast = tool_scores(fast_vectors, index.fast_matrix(use_head=False), starts)
        full = tool_scores(full_vectors, index.matrix(full_tier), starts)
        fast = raw_fast
        if head_vectors is not None:
            fast = tool_scores(head_vectors, index.fast_matrix(use_head=True), starts)

        position = {tool: i for i, tool in enumerate(tool_ids)}
        for row, query in enumerate(queries):
            if query.candidates:
                allowed = np.zeros(len(tool_ids), dtype=bool)
                allowed[[position[tool] for tool in query.candidates]] = True
                for scores in (fast, raw_fast, full):
                    scores[row, ~allowed] = -np.inf
        return cls(
            tuple(queries),
            tool_ids,
            fast,
            full,
            fast_without_head=raw_fast if head_vectors is not None else None,
            head=index.head_info.fingerprint if router.head is not None else None,
        )

    def without_head(self) -> ScoreTable:
        """Return the same table with the raw fast tier's scores, as a router without the head would compute them."""
        if self.fast_without_head is None:
            return self
        return ScoreTable(self.queries, self.tool_ids, self.fast_without_head, self.full)

    def gold_mask(self) -> np.ndarray:
        """Return ``(queries, tools)`` booleans that are True where the tool is in the query's gold list."""
        position = {tool: i for i, tool in enumerate(self.tool_ids)}
        mask = np.zeros(self.fast.shape, dtype=bool)
        for row, query in enumerate(self.queries):
            mask[row, [position[tool] for tool in query.gold or ()]] = True
        return mask


def cascade_decisions(
    table: ScoreTable, margin: float, min_score: float | None, fast_min_score: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay the router's cascade: return (chosen tool position or -1, deciding scores, escalated mask)."""
    escalated = unsure_rows(table.fast, 1, margin, fast_min_score)
    scores = np.where(escalated[:, None], table.full, table.fast)
    chosen = scores.argmax(axis=1)
    if min_score is not None:
        abstain = escalated & (table.full.max(axis=1) < min_score)
        chosen = np.where(abstain, -1, chosen)
    return chosen, scores, escalated


def tier_decisions(scores: np.ndarray, min_score: float | None) -> np.ndarray:
    """Chosen tool position per row at one tier, -1 where the best score is below ``min_score``."""
    chosen = scores.argmax(axis=1)
    if min_score is not None:
        chosen = np.where(scores.max(axis=1) < min_score, -1, chosen)
    return chosen


def metrics(table: ScoreTable, chosen: np.ndarray, scores: np.ndarray, rows: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1, recall@k, MRR (in-scope queries) and abstention precision/recall (all queries)."""
    gold = table.gold_mask()
    if rows is not None:
        gold, chosen, scores = gold[rows], chosen[rows], scores[rows]
    in_scope = gold.any(axis=1)
    result: dict[str, Any] = {"n": int(len(chosen)), "in_scope": int(in_scope.sum())}

    if in_scope.any():
        hit = np.zeros(len(chosen), dtype=bool)
        picked = chosen >= 0
        hit[picked] = gold[picked, chosen[picked]]
        result["top1"] = float(hit[in_scope].mean())

        # Rank of the best-ranked gold tool: 1 + the number of tools scoring strictly higher.
        best_gold = np.where(gold, scores, -np.inf).max(axis=1)
        rank = 1 + (scores > best_gold[:, None]).sum(axis=1)
        for k in RECALL_KS:
            result[f"recall@{k}"] = float((rank[in_scope] <= k).mean())
        result["mrr"] = float((1.0 / rank[in_scope]).mean())

    out_of_scope = ~in_scope
    abstained = chosen < 0
    if out_of_scope.any():
        result["abstention_recall"] = float(abstained[out_of_scope].mean())
        result["abstention_precision"] = float(out_of_scope[abstained].mean()) if abstained.any() else 0.0
    return result


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the fast tier alone, the full tier alone and the cascade, overall and per language."""

    fast: dict[str, Any]
    full: dict[str, Any]
    cascade: dict[str, Any]
    n: int
    by_language: dict[str, dict[str, dict[str, Any]]]
    thresholds: dict[str, Any]
    without_head: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result = {
            "fast": self.fast,
            "full": self.full,
            "cascade": self.cascade,
            "n": self.n,
            "by_language": self.by_language,
            "thresholds": self.thresholds,
            "head": self.head,
        }
        for name, row in self.without_head.items():
            result[f"{name}_without_head"] = row
        return result


def evaluate(router: Router, queries: Sequence[Query], *, table: ScoreTable | None = None, **options: Any) -> Evaluation:
    """Evaluate ``router`` at its thresholds on labelled ``queries`` (see :class:`ScoreTable` for ``options``)."""
    unlabelled = [str(row) for row, query in enumerate(queries) if query.gold is None]
    if unlabelled:
        raise QueryFileError(
            f"evaluate needs a 'gold' list on every query; queries {', '.join(unlabelled[:10])} have none "
            "(use 'gold': [] for a query that no tool fits)"
        )
    table = table or ScoreTable.compute(router, queries, **options)
    thresholds = router.thresholds
    fast_chosen = table.fast.argmax(axis=1)
    full_chosen = tier_decisions(table.full, thresholds.min_score)
    cascade_chosen, cascade_scores, escalated = cascade_decisions(
        table, thresholds.margin, thresholds.min_score, thresholds.fast_min_score
    )

    raw = table.without_head() if table.head is not None else None
    if raw is not None:
        raw_chosen, raw_scores, raw_escalated = cascade_decisions(
            raw, thresholds.margin, thresholds.min_score, thresholds.fast_min_score
        )

    def measure(rows: np.ndarray | None) -> dict[str, dict[str, Any]]:
        cascade = metrics(table, cascade_chosen, cascade_scores, rows)
        cascade["escalation_rate"] = float(escalated[rows].mean() if rows is not None else escalated.mean())
        measured = {
            "fast": metrics(table, fast_chosen, table.fast, rows),
            "full": metrics(table, full_chosen, table.full, rows),
            "cascade": cascade,
        }
        if raw is not None:
            measured["fast_without_head"] = metrics(raw, raw.fast.argmax(axis=1), raw.fast, rows)
            measured["cascade_without_head"] = metrics(raw, raw_chosen, raw_scores, rows)
            measured["cascade_without_head"]["escalation_rate"] = float(
                raw_escalated[rows].mean() if rows is not None else raw_escalated.mean()
            )
        return measured

    overall = measure(None)
    languages: dict[str, list[int]] = defaultdict(list)
    for row, query in enumerate(table.queries):
        if query.lang:
            languages[query.lang].append(row)
    by_language = {lang: measure(np.asarray(rows)) for lang, rows in sorted(languages.items())} if len(languages) > 1 else {}

    return Evaluation(
        fast=overall["fast"],
        full=overall["full"],
        cascade=overall["cascade"],
        n=len(table.queries),
        by_language=by_language,
        thresholds=thresholds.to_dict(),
        without_head={name[: -len("_without_head")]: row for name, row in overall.items() if name.endswith("_without_head")},
        head=table.head,
    )


def format_evaluation(evaluation: Evaluation) -> str:
    """Format an evaluation as a plain-text table for the command line."""
    columns = ["top1", "recall@1", "recall@3", "recall@5", "recall@10", "mrr", "abstention_precision", "abstention_recall"]
    present = [c for c in columns if c in evaluation.full]
    short = {"abstention_precision": "abst_prec", "abstention_recall": "abst_rec"}
    header = f"{'':<13}" + "".join(f"{short.get(c, c):>11}" for c in present) + f"{'escalated':>11}"
    lines = [f"{evaluation.n} queries" + (f", exit head {evaluation.head}" if evaluation.head else ""), header]
    rows = {"fast": evaluation.fast, "full": evaluation.full, "cascade": evaluation.cascade}
    if evaluation.without_head:
        rows = {
            "fast+head": evaluation.fast,
            "fast": evaluation.without_head["fast"],
            "full": evaluation.full,
            "cascade+head": evaluation.cascade,
            "cascade": evaluation.without_head["cascade"],
        }
    for name, row in rows.items():
        cells = "".join(f"{row[c]:>11.3f}" for c in present)
        escalated = f"{row['escalation_rate']:>11.1%}" if "escalation_rate" in row else f"{'':>11}"
        lines.append(f"{name:<13}{cells}{escalated}")
    for lang, by_tier in evaluation.by_language.items():
        lines.append(
            f"  {lang:<8}fast {by_tier['fast'].get('top1', float('nan')):.3f}  "
            f"full {by_tier['full'].get('top1', float('nan')):.3f}  "
            f"cascade {by_tier['cascade'].get('top1', float('nan')):.3f}  "
            f"escalated {by_tier['cascade']['escalation_rate']:.1%}  (n={by_tier['full']['n']})"
        )
    return "\n".join(lines)
