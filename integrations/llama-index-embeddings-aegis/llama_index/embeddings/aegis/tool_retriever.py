"""AegisToolRetriever: the top-k LlamaIndex tools for a task, chosen by the aegis-router cascade.

It is an ``ObjectRetriever[BaseTool]``, the type LlamaIndex agents
(``FunctionAgent``, ``ReActAgent``, ``CodeActAgent``) accept as
``tool_retriever``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aegis_router import Tier
from aegis_router.catalogue import Tool, tool_text
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.objects import ObjectRetriever
from llama_index.core.objects.tool_node_mapping import SimpleToolNodeMapping
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.tools.types import BaseTool

from .encoders import check_tier, resolve_encoder, to_tier

if TYPE_CHECKING:
    from aegis_router import Encoder, Router

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3


class AegisToolRetriever(ObjectRetriever[BaseTool]):
    """An object retriever of the ``top_k`` tools that best fit a task, for an agent's ``tool_retriever``.

    Each tool's name, description and parameter names are embedded once, when
    the retriever is built. A task is embedded at the model's fast tier and
    escalates to the full tier when the cut between the k-th and the next tool
    is unclear. Tools come back best first.

    A query that equals a tool's name returns that tool alone, because
    LlamaIndex agents look a tool up before calling it by retrieving with its
    name (``BaseWorkflowAgent.call_tool`` in llama-index-core 0.14). A blank
    query returns no tools.
    """

    def __init__(
        self,
        tools: Sequence[BaseTool],
        encoder: Encoder | None = None,
        *,
        model_name: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        margin: float | None = None,
        fast_tier: Tier | str | None = None,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
    ) -> None:
        """Embed ``tools`` with ``encoder``, or with the shared model ``model_name`` (default ``"demo"``).

        ``margin`` and ``fast_tier`` override the model profile's cascade
        settings. ``node_postprocessors`` run on the retrieved tool nodes, as
        in any ``ObjectRetriever``.
        """
        tools = list(tools)
        catalogue = _tool_catalogue(tools)
        _check_top_k(top_k, len(catalogue))

        encoder = resolve_encoder(encoder, model_name)
        tier = to_tier(fast_tier, "fast_tier")
        if tier is not None:
            check_tier(encoder, tier, "fast_tier")

        # Imported here because aegis_router.router imports torch.
        from aegis_router import Router

        router = Router.from_catalogue(catalogue, encoder, fast_tier=tier, margin=margin)
        super().__init__(
            retriever=AegisToolNodeRetriever(router, top_k),
            object_node_mapping=SimpleToolNodeMapping(tools),
            node_postprocessors=node_postprocessors,
        )

    @property
    def router(self) -> Router:
        """The router over the tools, whose ``select`` also returns scores, margin and tier."""
        return self.retriever.router

    @property
    def top_k(self) -> int:
        return self.retriever.top_k


class AegisToolNodeRetriever(BaseRetriever):
    """A retriever of one node per selected tool, scored at the tier that decided.

    Each node's ``metadata["name"]`` is the tool's name, which
    ``SimpleToolNodeMapping`` maps back to the tool.
    """

    def __init__(self, router: Router, top_k: int) -> None:
        _check_top_k(top_k, len(router.index.catalogue))
        super().__init__()
        self.router = router
        self.top_k = top_k
        # Nodes by aegis tool id, and the same nodes by the LlamaIndex tool name,
        # which keeps any surrounding whitespace that Tool ids strip.
        self._nodes = {
            tool.id: TextNode(id_=f"aegis-tool-{tool.id}", text=tool_text(tool), metadata={"name": tool.metadata["name"]})
            for tool in router.index.catalogue
        }
        self._nodes_by_name = {node.metadata["name"]: node for node in self._nodes.values()}

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not query.strip():
            logger.warning("the query is blank, so no tools were retrieved")
            return []
        if query in self._nodes_by_name:
            # Exact name lookup: no score, because no embedding was compared.
            return [NodeWithScore(node=self._nodes_by_name[query], score=None)]

        selection = self.router.select(query, k=self.top_k)
        logger.debug(
            "selected %s at tier %s (escalated: %s, margin %.3f)",
            [candidate.tool.id for candidate in selection.candidates],
            selection.tier.key,
            selection.escalated,
            selection.margin,
        )
        return [NodeWithScore(node=self._nodes[candidate.tool.id], score=candidate.score) for candidate in selection.candidates]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _check_top_k(top_k: int, tool_count: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= tool_count:
        raise ValueError(f"top_k must be an integer between 1 and the number of tools ({tool_count}), got {top_k!r}")


def _tool_catalogue(tools: list[BaseTool]) -> list[Tool]:
    """Convert LlamaIndex tools to aegis-router tools, one per unique name, with their parameter schemas."""
    if not tools:
        raise ValueError("tools is empty: pass at least one LlamaIndex tool (FunctionTool, QueryEngineTool, ...)")

    catalogue = []
    seen: dict[str, int] = {}
    for position, tool in enumerate(tools):
        if not isinstance(tool, BaseTool):
            raise TypeError(
                f"tool {position} is a {type(tool).__name__}, expected a LlamaIndex BaseTool; "
                "wrap plain functions with FunctionTool.from_defaults(fn)"
            )
        metadata = tool.metadata
        name = metadata.name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"tool {position} has no name; agents call tools by name, so give each tool one")
        if name in seen:
            raise ValueError(f"tools {seen[name]} and {position} are both named {name!r}; tool names must be unique")
        seen[name] = position
        if not isinstance(metadata.description, str) or not metadata.description.strip():
            raise ValueError(
                f"tool {position} ({name!r}) has an empty description; the retriever embeds it, "
                "so describe what the tool does"
            )
        catalogue.append(
            Tool(
                id=name,
                name=name,
                description=metadata.description,
                parameters=metadata.get_parameters_dict(),
                metadata={"name": name},
            )
        )
    return catalogue
