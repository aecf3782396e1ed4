from __future__ import annotations

import asyncio
import re

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.base_selector import SelectorResult
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import CustomQueryEngine, RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.tools import QueryEngineTool, RetrieverTool, ToolMetadata

from aegis_router import TierError
from llama_index.embeddings.aegis import AegisEmbedding, AegisSelector

ENGINES = {
    "sales_reports": "Quarterly revenue, sales volumes and profit figures of the company, by region and product line.",
    "hr_handbook": "The employee handbook: vacation days, parental leave, remote work, expenses and other HR policies.",
    "it_helpdesk": "Troubleshooting guides for laptops, VPN access, password resets, email and printers.",
    "api_docs": "Developer documentation of the product's REST API and SDK: authentication, endpoints and rate limits.",
}
CHOICES = [ToolMetadata(name=name, description=description) for name, description in ENGINES.items()]
EXPECTED = [
    ("How many vacation days do new employees get?", "hr_handbook"),
    ("Can I work from home on Fridays?", "hr_handbook"),
    ("What was our revenue in Europe last quarter?", "sales_reports"),
    ("Which product line made the most profit?", "sales_reports"),
    ("I can't connect to the VPN from home", "it_helpdesk"),
    ("My laptop won't turn on", "it_helpdesk"),
    ("How do I authenticate requests to the API?", "api_docs"),
]
REASON = re.compile(r"score (-?\d\.\d{3}), margin (\d\.\d{3}|n/a \(no other choice\)) over the next choice, decided at tier (\d+x\d+) (by the fast tier|after escalating from the fast tier)")
NAMES = list(ENGINES)


class NamedEngine(CustomQueryEngine):
    """A query engine whose response is its own name, so a test sees which engine ran."""

    name: str

    def custom_query(self, query_str: str) -> str:
        return f"answered by {self.name}"


@pytest.fixture(scope="module")
def router_engine(demo_encoder) -> RouterQueryEngine:
    tools = [
        QueryEngineTool.from_defaults(NamedEngine(name=name), name=name, description=description)
        for name, description in ENGINES.items()
    ]
    return RouterQueryEngine(selector=AegisSelector(demo_encoder), query_engine_tools=tools, llm=MockLLM())


def reason_parts(reason: str) -> tuple[float, str, str, str]:
    match = REASON.fullmatch(reason)
    assert match is not None, f"reason does not state score, margin and tier: {reason!r}"
    return float(match.group(1)), match.group(2), match.group(3), match.group(4)


@pytest.mark.parametrize(("query", "expected"), EXPECTED)
def test_router_engine_picks_expected_engine(router_engine, query, expected):
    response = router_engine.query(query)

    assert str(response) == f"answered by {expected}"
    result = response.metadata["selector_result"]
    assert [NAMES[index] for index in result.inds] == [expected]


def test_reason_states_score_margin_and_tier(demo_encoder):
    selector = AegisSelector(demo_encoder)
    fast_tier = "1x384"
    full_tier = demo_encoder.full_tier.key

    for query, _ in EXPECTED:
        reason = selector.select(CHOICES, query).reason
        score, margin, tier, decided = reason_parts(reason)

        assert -1.0 <= score <= 1.0
        assert float(margin) >= 0.0
        assert (tier, decided) in {(fast_tier, "by the fast tier"), (full_tier, "after escalating from the fast tier")}


def test_single_choice_has_no_margin(demo_encoder):
    result = AegisSelector(demo_encoder).select(["Answers every question."], "what time is it")

    assert result.ind == 0
    assert reason_parts(result.reason)[1] == "n/a (no other choice)"


def test_string_choices_are_accepted(demo_encoder):
    descriptions = list(ENGINES.values())

    result = AegisSelector(demo_encoder).select(descriptions, "I forgot my password and cannot log in to my email")

    assert result.inds == [NAMES.index("it_helpdesk")]


def test_repeated_calls_embed_choices_once(counting_encoder):
    selector = AegisSelector(counting_encoder)

    for query, _ in EXPECTED:
        selector.select(CHOICES, query)

    assert counting_encoder.calls("encode_tiers") == [len(CHOICES)]
    assert counting_encoder.calls("encode_with_state") == [1] * len(EXPECTED)


def test_same_texts_share_cache_across_types(counting_encoder):
    selector = AegisSelector(counting_encoder)
    descriptions = list(ENGINES.values())

    selector.select(descriptions, EXPECTED[0][0])
    selector.select([ToolMetadata(description=text) for text in descriptions], EXPECTED[1][0])

    assert counting_encoder.calls("encode_tiers") == [len(descriptions)]


def test_new_choice_set_is_embedded(counting_encoder):
    selector = AegisSelector(counting_encoder)

    selector.select(CHOICES, EXPECTED[0][0])
    selector.select(CHOICES[:2], EXPECTED[0][0])
    selector.select(CHOICES, EXPECTED[1][0])

    assert counting_encoder.calls("encode_tiers") == [len(CHOICES), 2]


def test_cache_evicts_least_recently_used(counting_encoder):
    selector = AegisSelector(counting_encoder, max_cached_choice_sets=1)

    selector.select(CHOICES, EXPECTED[0][0])
    selector.select(CHOICES[:2], EXPECTED[0][0])
    selector.select(CHOICES, EXPECTED[0][0])

    assert counting_encoder.calls("encode_tiers") == [len(CHOICES), 2, len(CHOICES)]


def test_cache_keeps_recent_choice_sets(counting_encoder):
    selector = AegisSelector(counting_encoder, max_cached_choice_sets=2)

    selector.select(CHOICES, EXPECTED[0][0])
    selector.select(CHOICES[:2], EXPECTED[0][0])
    selector.select(CHOICES, EXPECTED[0][0])
    selector.select(CHOICES[:2], EXPECTED[0][0])

    assert counting_encoder.calls("encode_tiers") == [len(CHOICES), 2]


def test_multi_selection_ranks_best_first(demo_encoder):
    selector = AegisSelector(demo_encoder, max_outputs=2)

    result = selector.select(CHOICES, "What was our revenue in Europe last quarter?")

    assert len(result.selections) == 2
    assert result.inds[0] == NAMES.index("sales_reports")
    assert len(set(result.inds)) == 2
    assert [reason.split(":")[0] for reason in result.reasons] == ["rank 1", "rank 2"]
    scores = [reason_parts(reason.split(": ", 1)[1])[0] for reason in result.reasons]
    assert scores[0] >= scores[1]


def test_multi_selection_is_capped_by_choices(demo_encoder):
    result = AegisSelector(demo_encoder, max_outputs=10).select(CHOICES, "My laptop won't turn on")

    assert sorted(result.inds) == list(range(len(CHOICES)))
    assert result.inds[0] == NAMES.index("it_helpdesk")


def test_multi_selection_router_combines_responses(demo_encoder):
    tools = [
        QueryEngineTool.from_defaults(NamedEngine(name=name), name=name, description=description)
        for name, description in ENGINES.items()
    ]
    engine = RouterQueryEngine(
        selector=AegisSelector(demo_encoder, max_outputs=2), query_engine_tools=tools, llm=MockLLM()
    )

    response = engine.query("How many vacation days do new employees get?")

    result = response.metadata["selector_result"]
    assert len(result.inds) == 2
    assert result.inds[0] == NAMES.index("hr_handbook")


def test_min_score_empties_escalated_selection(demo_encoder):
    # margin=1.0 is above every fast-tier gap between these choices, so the
    # query escalates and min_score applies to full-tier scores.
    strict = AegisSelector(demo_encoder, margin=1.0, min_score=0.95)
    lenient = AegisSelector(demo_encoder, margin=1.0, min_score=-1.0)
    query = "Recipe for banana bread with walnuts"

    assert strict.select(CHOICES, query).selections == []
    assert len(lenient.select(CHOICES, query).selections) == 1


def test_min_score_filters_multi_selection(demo_encoder):
    # Three of four choices leave a cut, so margin=1.0 makes the selection escalate.
    selector = AegisSelector(demo_encoder, max_outputs=3, margin=1.0, min_score=0.3)

    result = selector.select(CHOICES, "How do I authenticate requests to the API?")

    assert result.inds == [NAMES.index("api_docs")]


def test_async_select_matches_sync(demo_encoder):
    selector = AegisSelector(demo_encoder, max_outputs=2)
    query = EXPECTED[4][0]

    async_result = asyncio.run(selector.aselect(CHOICES, query))

    assert isinstance(async_result, SelectorResult)
    assert async_result == selector.select(CHOICES, query)


def test_async_router_engine_query(router_engine):
    query, expected = EXPECTED[2]

    response = asyncio.run(router_engine.aquery(query))

    assert str(response) == f"answered by {expected}"


def test_router_retriever_uses_selected_index(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)
    topics = {
        "hr_handbook": ["New employees get 25 vacation days a year.", "Parental leave lasts sixteen weeks."],
        "it_helpdesk": ["If the VPN drops, restart the client and sign in again.", "Printers are on the second floor."],
    }
    tools = [
        RetrieverTool.from_defaults(
            VectorStoreIndex.from_documents([Document(text=text) for text in texts], embed_model=embedding).as_retriever(
                similarity_top_k=1
            ),
            name=name,
            description=ENGINES[name],
        )
        for name, texts in topics.items()
    ]
    retriever = RouterRetriever(selector=AegisSelector(demo_encoder), retriever_tools=tools, llm=MockLLM())

    nodes = retriever.retrieve("How many vacation days do I get?")

    assert [node.get_content() for node in nodes] == ["New employees get 25 vacation days a year."]


def test_selector_has_no_prompts(demo_encoder):
    selector = AegisSelector(demo_encoder)

    assert selector.get_prompts() == {}
    selector.update_prompts({})


@pytest.mark.parametrize(
    ("choices", "query", "error", "message"),
    [
        ([], "anything", ValueError, "choices is empty"),
        ([ToolMetadata(name="blank", description="  ")], "anything", ValueError, r"choice 0 \('blank'\) has an empty description"),
        (["Answers questions.", ""], "anything", ValueError, "choice 1 has an empty description"),
        (CHOICES, "   ", ValueError, "the query is empty"),
    ],
)
def test_invalid_select_input_raises(demo_encoder, choices, query, error, message):
    with pytest.raises(error, match=message):
        AegisSelector(demo_encoder).select(choices, query)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_outputs": 0}, ValueError, "max_outputs must be an integer of at least 1, got 0"),
        ({"max_outputs": 1.5}, ValueError, "max_outputs must be an integer"),
        ({"max_cached_choice_sets": 0}, ValueError, "max_cached_choice_sets must be"),
        ({"min_score": 1.5}, ValueError, "min_score must be a cosine between -1 and 1"),
        ({"margin": -0.1}, ValueError, "margin must be at least 0"),
        ({"fast_tier": "8x384"}, TierError, "fast_tier: 8 layers/384d asks for 8 layers"),
    ],
)
def test_invalid_selector_options_raise(demo_encoder, options, error, message):
    with pytest.raises(error, match=message):
        AegisSelector(demo_encoder, **options)
