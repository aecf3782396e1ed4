"""AegisSelector: LlamaIndex's selector interface answered by the aegis-router cascade instead of an LLM call."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegis_router import Tier
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata

from .encoders import check_tier, resolve_encoder, to_tier

if TYPE_CHECKING:
    from aegis_router import Encoder, Router, Selection

logger = logging.getLogger(__name__)

# Choices without a name (plain strings) are embedded under this name, the
# same for all of them, so the name adds no difference between choices.
UNNAMED_CHOICE = "choice"
DEFAULT_MAX_CACHED_CHOICE_SETS = 8

ChoiceKey = tuple[tuple[str, str], ...]


class AegisSelector(BaseSelector):
    """A LlamaIndex selector that chooses query engines, retrievers or tools with the aegis-router cascade.

    Works wherever LlamaIndex takes a ``BaseSelector``, such as
    ``RouterQueryEngine`` and ``RouterRetriever``. Each choice's name and
    description are embedded once and kept, keyed by that text, for the
    ``max_cached_choice_sets`` most recently used sets of choices, so repeated
    queries over the same choices embed only the query. The query is embedded
    at the model's fast tier and escalates to the full tier when the fast pass
    is unsure. Each selection's reason states its score, its margin over the
    next choice and the tier that decided.

    ``max_outputs`` above 1 selects that many choices (fewer when there are
    fewer choices), best first; ``RouterQueryEngine`` then queries each and
    combines the responses. ``min_score`` (a full-tier cosine) drops choices
    that score below it after escalating. A fast-tier decision never drops a
    choice, as in :class:`aegis_router.Router`. With no ``min_score`` the best
    choice is always selected, as LlamaIndex's LLM selectors do.

    NOTE: when ``max_outputs`` is at least the number of choices there is no
    cut between selected and unselected choices, so the fast tier always
    decides and ``min_score`` never drops a choice.
    """

    def __init__(
        self,
        encoder: Encoder | None = None,
        *,
        model_name: str | None = None,
        max_outputs: int = 1,
        min_score: float | None = None,
        margin: float | None = None,
        fast_tier: Tier | str | None = None,
        max_cached_choice_sets: int = DEFAULT_MAX_CACHED_CHOICE_SETS,
    ) -> None:
        """Use ``encoder``, or load ``model_name`` (default ``"demo"``) shared with the other aegis components.

        ``margin`` and ``fast_tier`` override the model profile's cascade
        settings: the fast pass decides alone when its best choice leads the
        next by at least ``margin`` (in cosine points).
        """
        _check_count(max_outputs, "max_outputs")
        _check_count(max_cached_choice_sets, "max_cached_choice_sets")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be a cosine between -1 and 1, or None to always select, got {min_score}")
        if margin is not None and not margin >= 0.0:
            raise ValueError(f"margin must be at least 0 (cosine points), got {margin}")

        self._encoder = resolve_encoder(encoder, model_name)
        tier = to_tier(fast_tier, "fast_tier")
        self._fast_tier = check_tier(self._encoder, tier, "fast_tier") if tier is not None else None
        self.max_outputs = max_outputs
        self.max_cached_choice_sets = max_cached_choice_sets
        # Read-only, because cached routers are built with these values.
        self._min_score = min_score
        self._margin = margin
        self._routers: OrderedDict[ChoiceKey, Router] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    @property
    def min_score(self) -> float | None:
        return self._min_score

    @property
    def margin(self) -> float | None:
        return self._margin

    def _get_prompts(self) -> dict[str, Any]:
        # The selector uses no prompt: it embeds, it does not ask an LLM.
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if prompts:
            logger.warning("AegisSelector uses no prompts; ignoring %s", ", ".join(sorted(prompts)))

    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        task = _query_text(query)
        router = self._router_for(choices)
        k = min(self.max_outputs, len(choices))
        result = self._select_one(router, task) if k == 1 else self._select_many(router, task, k)
        if not result.selections:
            logger.warning(
                "no choice scored at least min_score %.3f for query %r; the selection is empty", self.min_score, task
            )
        return result

    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        return await asyncio.to_thread(self._select, choices, query)

    def _select_one(self, router: Router, task: str) -> SelectorResult:
        route = router.route(task)
        if route.tool is None:
            return SelectorResult(selections=[])
        reason = _reason(route.score, route.margin, route.tier, route.escalated)
        return SelectorResult(selections=[SingleSelection(index=int(route.tool.id), reason=reason)])

    def _select_many(self, router: Router, task: str, k: int) -> SelectorResult:
        selection = router.select(task, k=k)
        selections = []
        for rank, candidate in enumerate(selection.candidates):
            if selection.escalated and self.min_score is not None and candidate.score < self.min_score:
                break
            margin = _gap_to_next(selection, rank)
            reason = _reason(candidate.score, margin, selection.tier, selection.escalated)
            selections.append(SingleSelection(index=int(candidate.tool.id), reason=f"rank {rank + 1}: {reason}"))
        return SelectorResult(selections=selections)

    def _router_for(self, choices: Sequence[ToolMetadata]) -> Router:
        """Return the router over ``choices``, embedding them only when this set of texts is new."""
        key = _choice_key(choices)
        with self._lock:
            router = self._routers.get(key)
            if router is not None:
                self._routers.move_to_end(key)
                return router

            # Imported here because aegis_router.router imports torch.
            from aegis_router import Router, Tool

            tools = [Tool(id=str(position), name=name, description=text) for position, (name, text) in enumerate(key)]
            router = Router.from_catalogue(
                tools,
                self._encoder,
                fast_tier=self._fast_tier,
                margin=self.margin,
                # Without min_score the router must never return "no tool
                # fits", and Router reads None as "use the profile's value".
                min_score=-math.inf if self.min_score is None else self.min_score,
            )
            logger.debug("embedded %d choices for the selector", len(tools))
            self._routers[key] = router
            while len(self._routers) > self.max_cached_choice_sets:
                self._routers.popitem(last=False)
            return router


def _choice_key(choices: Sequence[ToolMetadata]) -> ChoiceKey:
    """Return each choice's embedded (name, description), checking that every choice has a description."""
    if not choices:
        raise ValueError("choices is empty: pass at least one ToolMetadata or description string to select from")

    key = []
    for position, choice in enumerate(choices):
        name = choice.name.strip() if isinstance(choice.name, str) and choice.name.strip() else UNNAMED_CHOICE
        label = f"choice {position}" + (f" ({choice.name!r})" if name != UNNAMED_CHOICE else "")
        if not isinstance(choice.description, str):
            raise TypeError(f"{label} has a description of type {type(choice.description).__name__}; expected a string")
        if not choice.description.strip():
            raise ValueError(
                f"{label} has an empty description; the selector embeds each choice's description, "
                "so describe what the choice is for"
            )
        key.append((name, choice.description.strip()))
    return tuple(key)


def _query_text(query: QueryBundle) -> str:
    text = query.query_str
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the query is empty ({text!r}); the selector needs query text to compare with the choices")
    return text


def _gap_to_next(selection: Selection, rank: int) -> float:
    """Return the score gap between the candidate at ``rank`` and the next-ranked choice."""
    candidates = selection.candidates
    if rank + 1 < len(candidates):
        return candidates[rank].score - candidates[rank + 1].score
    return selection.margin


def _reason(score: float, margin: float, tier: Tier, escalated: bool) -> str:
    gap = f"{margin:.3f}" if math.isfinite(margin) else "n/a (no other choice)"
    decided = "after escalating from the fast tier" if escalated else "by the fast tier"
    return f"score {score:.3f}, margin {gap} over the next choice, decided at tier {tier.key} {decided}"


def _check_count(value: int, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be an integer of at least 1, got {value!r}")
