"""Route questions between three LlamaIndex query engines with the aegis-router cascade, offline.

Each engine is a VectorStoreIndex over a few in-memory documents, embedded
with AegisEmbedding. A RouterQueryEngine picks the engine with AegisSelector,
so choosing costs one embedding pass and no LLM call. Answers come from
LlamaIndex's MockLLM, which only echoes its prompt, so the script prints the
choice, its reason and the passage the chosen engine retrieved.

    python examples/llamaindex_router.py [--model demo]

Needs the integration: pip install -e 'integrations/llama-index-embeddings-aegis'.
The default model is the bundled demo model, all-MiniLM-L6-v2 (English only).
"""

from __future__ import annotations

import argparse
import logging
import time

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool
from llama_index.embeddings.aegis import AegisEmbedding, AegisSelector

# Each engine: its description, which the selector embeds, and its documents.
ENGINES = {
    "hr_handbook": (
        "The employee handbook: vacation days, parental leave, remote work, expenses and other HR policies.",
        [
            "New employees get 25 vacation days a year, and one more for every two years of service.",
            "Parental leave is sixteen weeks at full pay, for every parent.",
            "Staff may work from home up to three days a week after their probation period.",
        ],
    ),
    "it_helpdesk": (
        "Troubleshooting guides for laptops, VPN access, password resets, email and printers.",
        [
            "If the VPN keeps disconnecting, update the client and sign in again with your badge number.",
            "Reset a forgotten password on the self-service portal; the link expires after an hour.",
            "A laptop that does not start should be charged for 30 minutes before calling the helpdesk.",
        ],
    ),
    "sales_reports": (
        "Quarterly revenue, sales volumes and profit figures of the company, by region and product line.",
        [
            "Revenue in Europe grew 8% in the third quarter, to 41 million euros.",
            "The analytics product line had the highest margin, at 37%.",
            "Sales volumes in Asia fell 3% after the price change in July.",
        ],
    ),
}

QUESTIONS = [
    "How many vacation days do new employees get?",
    "My VPN connection keeps dropping, what should I do?",
    "What was our revenue in Europe last quarter?",
    "Can I work from home on Fridays?",
    "Which product line made the most profit?",
    "I forgot my password",
]


def build_router(model: str) -> RouterQueryEngine:
    """Index each engine's documents and put a RouterQueryEngine with AegisSelector over the engines."""
    embedding = AegisEmbedding(model)
    llm = MockLLM()
    tools = []
    for name, (description, texts) in ENGINES.items():
        index = VectorStoreIndex.from_documents([Document(text=text) for text in texts], embed_model=embedding)
        engine = index.as_query_engine(llm=llm, similarity_top_k=1)
        tools.append(QueryEngineTool.from_defaults(engine, name=name, description=description))

    # The selector reuses the embedding model's loaded weights.
    selector = AegisSelector(embedding.encoder)
    return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=llm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    router = build_router(args.model)
    names = list(ENGINES)
    print(f"built {len(names)} engines in {time.perf_counter() - started:.1f} s: {', '.join(names)}\n")

    for question in QUESTIONS:
        response = router.query(question)
        selection = response.metadata["selector_result"]
        passage = response.source_nodes[0].get_content() if response.source_nodes else "(no passage)"
        print(f"Q: {question}")
        print(f"   engine: {names[selection.ind]}")
        print(f"   reason: {selection.reason}")
        print(f"   passage: {passage}\n")


if __name__ == "__main__":
    main()
