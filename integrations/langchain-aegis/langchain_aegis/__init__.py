"""LangChain integration of aegis-router: embeddings at a chosen tier, and tool selection for agents.

Importing this package does not import torch; the first model load does.
"""

from .embeddings import AegisEmbeddings
from .tool_selection import AegisToolSelector, ToolSelection, to_aegis_tool

__version__ = "0.1.0"

__all__ = [
    "AegisEmbeddings",
    "AegisToolSelector",
    "ToolSelection",
    "to_aegis_tool",
]
