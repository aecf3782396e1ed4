"""Pick the LangChain tools that fit a task with the aegis-router cascade, for agents with many tools.

An agent that binds fifty tools to every model call pays for their schemas in
every prompt and lets the model pick among look-alikes. :class:`AegisToolSelector`
embeds the tools once and, for each task, returns the few that fit, so the
agent binds only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegis_router import CatalogueError, Tier, Tool
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ._encoders import check_tier_fits, load_encoder

if TYPE_CHECKING:
    from aegis_router import Encoder, Router, Selection

logger = logging.getLogger(__name__)

DEFAULT_K = 5
DEFAULT_CACHE_SIZE = 4


@dataclass(frozen=True)
class ToolSelection:
    """The LangChain tools chosen for one task, best first, and the cascade's decision behind them.

    ``selection`` is the router's :class:`aegis_router.Selection`: the scores,
    the tier that decided, whether the fast tier escalated, and the margin
    between the last chosen tool and the next one.
    """

    tools: tuple[BaseTool, ...]
    selection: Selection

    @property
    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as plain JSON types, for logs."""
        margin = self.selection.margin
        return {
            "tools": self.names,
            "scores": [round(candidate.score, 6) for candidate in self.selection.candidates],
            "tier": self.selection.tier.key,
            "escalated": self.selection.escalated,
            "margin": round(margin, 6) if math.isfinite(margin) else None,
            "ms": round(self.selection.ms, 3),
        }


@dataclass(frozen=True)
class _ToolSet:
    """Tools converted for the router, with the key of their index."""

    tools: tuple[BaseTool, ...]
    by_name: dict[str, BaseTool]
    catalogue: tuple[Tool, ...]
    key: str


class AegisToolSelector:
    """Select the ``k`` LangChain tools that best fit a task.

    Each tool is embedded from its name, description and argument schema. The
    index of a tool list is built on first use and cached under a key of those
    three fields. So the tools are embedded again when a name, description or
    schema changes, but not when the same tools come in another order or as new
    objects. The ``cache_size`` most recently used indexes are kept.

    A selector is safe to use from several threads. ``last_selection`` is the
    most recent decision of any thread; use :meth:`select_with_details` for the
    decision of one call.

    Example::

        selector = AegisToolSelector(tools, model="demo", k=5)
        model.bind_tools(selector.select("book a table for two tonight"))
    """

    def __init__(
        self,
        tools: Sequence[BaseTool],
        *,
        model: str | os.PathLike[str] | Encoder = "demo",
        k: int = DEFAULT_K,
        margin: float | None = None,
        fast_tier: Tier | str | None = None,
        device: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """Convert and check ``tools`` and load the model. The index is built on the first selection.

        ``model`` is a model id or path ('demo' is the bundled all-MiniLM-L6-v2)
        or a loaded :class:`aegis_router.Encoder`. ``margin`` and ``fast_tier``
        override the model profile's cascade settings (see
        :meth:`aegis_router.Router.from_catalogue`).
        """
        self.k = _check_k(k)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be an integer of at least 1, got {cache_size!r}")

        self._tool_set = _convert(tools)
        self._encoder = load_encoder(model, device)
        if isinstance(fast_tier, str):
            fast_tier = Tier.parse(fast_tier)
        self._fast_tier = check_tier_fits(self._encoder, fast_tier, "fast_tier") if fast_tier is not None else None
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0):
            raise ValueError(f"margin must be a number of at least 0 (a cosine gap) or None, got {margin!r}")
        self._margin = margin
        self._cache_size = cache_size
        self._routers: OrderedDict[str, Router] = OrderedDict()
        self._lock = threading.Lock()
        self._index_builds = 0
        self.last_selection: ToolSelection | None = None

    @property
    def tools(self) -> tuple[BaseTool, ...]:
        """The tools to select from. Assigning a new list checks it, and the next selection uses it."""
        return self._tool_set.tools

    @tools.setter
    def tools(self, tools: Sequence[BaseTool]) -> None:
        self._tool_set = _convert(tools)

    @property
    def tool_registry(self) -> dict[str, BaseTool]:
        """The tools by name, the form that LangGraph-style "many tools" agents take as a tool registry."""
        return dict(self._tool_set.by_name)

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    @property
    def index_builds(self) -> int:
        """The number of index builds of this selector. A cache hit does not count."""
        return self._index_builds

    @property
    def router(self) -> Router:
        """The router over the current tools, built now when the cache has none for them."""
        return self._router_for(_convert(self._tool_set.tools))

    def select(self, task: str, k: int | None = None, *, tools: Sequence[BaseTool] | None = None) -> list[BaseTool]:
        """Return the ``k`` tools (default: the selector's ``k``) that best fit ``task``, best first.

        ``k`` above the number of tools returns all of them. ``tools`` selects
        from that list instead of the selector's own, with its index cached the
        same way.
        """
        return list(self.select_with_details(task, k, tools=tools).tools)

    def select_with_details(
        self, task: str, k: int | None = None, *, tools: Sequence[BaseTool] | None = None
    ) -> ToolSelection:
        """Select like :meth:`select`, and return the tools together with the cascade's decision."""
        if not isinstance(task, str):
            raise TypeError(f"task must be a string, got {type(task).__name__}")
        if not task.strip():
            raise ValueError("task is empty or whitespace only; pass the text of the task to select tools for")
        k = self.k if k is None else _check_k(k)

        # Converting again on every call notices a tool whose description or
        # schema was changed in place since it was given.
        tool_set = _convert(self._tool_set.tools if tools is None else tools)
        router = self._router_for(tool_set)
        selection = router.select(task, min(k, len(tool_set.tools)))

        chosen = ToolSelection(
            tools=tuple(tool_set.by_name[candidate.tool.id] for candidate in selection.candidates),
            selection=selection,
        )
        self.last_selection = chosen
        logger.debug(
            "selected %s at tier %s (escalated: %s, margin %.3f, %.1f ms)",
            chosen.names,
            selection.tier.key,
            selection.escalated,
            selection.margin,
            selection.ms,
        )
        return chosen

    async def aselect(self, task: str, k: int | None = None, *, tools: Sequence[BaseTool] | None = None) -> list[BaseTool]:
        """Select like :meth:`select` in the default thread pool, so the event loop keeps running meanwhile."""
        chosen = await run_in_executor(None, self.select_with_details, task, k, tools=tools)
        return list(chosen.tools)

    def retrieve_tools(self, query: str) -> list[str]:
        """Find the tools that fit a task and return their names, best first.

        query: the task, or the capability it needs, in one sentence.
        """
        return self.select_with_details(query).names

    async def aretrieve_tools(self, query: str) -> list[str]:
        """Find the tools that fit a task and return their names, best first.

        query: the task, or the capability it needs, in one sentence.
        """
        chosen = await run_in_executor(None, self.select_with_details, query)
        return chosen.names

    def _router_for(self, tool_set: _ToolSet) -> Router:
        from aegis_router import Router

        # Building under the lock makes a second caller with the same tools
        # wait for the first build instead of embedding the tools again.
        with self._lock:
            router = self._routers.get(tool_set.key)
            if router is not None:
                self._routers.move_to_end(tool_set.key)
                return router

            logger.info("indexing %d LangChain tools with %s", len(tool_set.catalogue), self._encoder.name)
            router = Router.from_catalogue(
                list(tool_set.catalogue), self._encoder, fast_tier=self._fast_tier, margin=self._margin
            )
            self._routers[tool_set.key] = router
            self._index_builds += 1
            while len(self._routers) > self._cache_size:
                self._routers.popitem(last=False)
            return router


def to_aegis_tool(tool: BaseTool) -> Tool:
    """Convert a LangChain tool to the :class:`aegis_router.Tool` the router embeds.

    The id and name are the tool's name, and ``parameters`` is the argument
    schema that the tool shows a chat model (``convert_to_openai_tool``), so
    arguments injected at run time are left out.
    """
    if not isinstance(tool, BaseTool):
        raise TypeError(
            f"expected a LangChain BaseTool, got {type(tool).__name__}; "
            "turn a function into one with the langchain_core.tools.tool decorator"
        )
    name = tool.name.strip() if isinstance(tool.name, str) else ""
    if not name:
        raise CatalogueError(f"a {type(tool).__name__} has an empty name; give every tool a unique name")
    description = tool.description.strip() if isinstance(tool.description, str) else ""
    if not description:
        raise CatalogueError(
            f"tool {name!r} has no description; the selector matches tasks against it, "
            "so give the tool a docstring or pass description="
        )

    function = convert_to_openai_tool(tool)["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return Tool(id=name, name=name, description=description, parameters=parameters)


def _convert(tools: Sequence[BaseTool]) -> _ToolSet:
    if isinstance(tools, (str, bytes, BaseTool)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of LangChain tools, got {type(tools).__name__}")
    items = tuple(tools)
    if not items:
        raise CatalogueError("tools is empty: pass at least one LangChain tool")

    catalogue: list[Tool] = []
    by_name: dict[str, BaseTool] = {}
    positions: dict[str, int] = {}
    for position, tool in enumerate(items):
        try:
            converted = to_aegis_tool(tool)
        except (TypeError, CatalogueError) as exc:
            raise type(exc)(f"tools[{position}]: {exc}") from exc
        if converted.id in positions:
            raise CatalogueError(
                f"duplicate tool name {converted.id!r} at positions {positions[converted.id]} and {position}: "
                "a chat model calls tools by name, so each name must be unique"
            )
        positions[converted.id] = position
        by_name[converted.id] = tool
        catalogue.append(converted)

    return _ToolSet(tools=items, by_name=by_name, catalogue=tuple(catalogue), key=_catalogue_key(catalogue))


def _catalogue_key(catalogue: Sequence[Tool]) -> str:
    # Sorted by name, so the same tools in another order share one index.
    entries = sorted(([tool.id, tool.description, tool.parameters] for tool in catalogue), key=lambda entry: entry[0])
    payload = json.dumps(entries, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return k
