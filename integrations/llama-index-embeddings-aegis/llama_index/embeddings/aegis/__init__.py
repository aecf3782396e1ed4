"""LlamaIndex integration of aegis-router: an embedding model, a selector and a tool retriever.

Importing this package does not load torch or a model; each class loads its
model when it is built.
"""

from llama_index.embeddings.aegis.base import AegisEmbedding
from llama_index.embeddings.aegis.encoders import DEFAULT_MODEL, shared_encoder
from llama_index.embeddings.aegis.selector import AegisSelector
from llama_index.embeddings.aegis.tool_retriever import AegisToolNodeRetriever, AegisToolRetriever

__all__ = [
    "DEFAULT_MODEL",
    "AegisEmbedding",
    "AegisSelector",
    "AegisToolNodeRetriever",
    "AegisToolRetriever",
    "shared_encoder",
]
