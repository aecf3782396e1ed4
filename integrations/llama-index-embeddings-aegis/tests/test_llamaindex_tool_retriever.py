from __future__ import annotations

import asyncio

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import MockLLM
from llama_index.core.objects import ObjectRetriever
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.tools import FunctionTool, QueryEngineTool

from aegis_router import TierError
from llama_index.embeddings.aegis import AegisToolRetriever


def get_weather(city: str, day: str = "today") -> str:
    """Return the weather forecast (temperature, rain, wind) for a city on a given day."""
    return f"sunny in {city} {day}"


def send_email(to: str, subject: str, body: str) -> str:
    """Send an email message to a recipient."""
    return f"sent to {to}"


def convert_currency(amount: float, source: str, target: str) -> float:
    """Convert an amount of money from one currency to another at today's exchange rate."""
    return amount


def create_calendar_event(title: str, start: str, attendees: list[str]) -> str:
    """Schedule a meeting in the calendar and invite attendees."""
    return title


def read_file(path: str) -> str:
    """Read a text file from the local disk and return its content."""
    return path


def search_web(query: str) -> str:
    """Search the web for pages about a topic and return the top results."""
    return query


FUNCTIONS = [get_weather, send_email, convert_currency, create_calendar_event, read_file, search_web]
EXPECTED = [
    ("will it rain in Oslo tomorrow", "get_weather"),
    ("write an email to Alice saying I will be late", "send_email"),
    ("how many yen is 250 euros", "convert_currency"),
    ("set up a meeting with the design team on Monday at 10", "create_calendar_event"),
    ("open notes.txt and show me what it says", "read_file"),
    ("find articles about solar panels online", "search_web"),
]


class ManualEngine(CustomQueryEngine):
    """A query engine whose response is always the same pointer to the manual."""

    def custom_query(self, query_str: str) -> str:
        return "see the manual"


@pytest.fixture(scope="module")
def tools() -> list[FunctionTool]:
    return [FunctionTool.from_defaults(function) for function in FUNCTIONS]


@pytest.fixture(scope="module")
def retriever(tools, demo_encoder) -> AegisToolRetriever:
    return AegisToolRetriever(tools, demo_encoder, top_k=2)


def names(tools) -> list[str]:
    return [tool.metadata.name for tool in tools]


@pytest.mark.parametrize(("query", "expected"), EXPECTED)
def test_best_tool_comes_first(retriever, query, expected):
    retrieved = retriever.retrieve(query)

    assert len(retrieved) == 2
    assert names(retrieved)[0] == expected
    assert len(set(names(retrieved))) == 2


def test_retrieved_tools_are_the_given_objects(retriever, tools):
    retrieved = retriever.retrieve(EXPECTED[0][0])

    assert all(any(tool is given for given in tools) for tool in retrieved)


def test_node_scores_are_sorted(retriever):
    nodes = retriever.retriever.retrieve("find articles about solar panels online")

    scores = [node.score for node in nodes]
    assert len(scores) == 2
    assert scores[0] >= scores[1]
    assert all(-1.0 <= score <= 1.0 for score in scores)


def test_async_retrieve_matches_sync(retriever):
    query = EXPECTED[2][0]

    retrieved = asyncio.run(retriever.aretrieve(query))

    assert names(retrieved) == names(retriever.retrieve(query))


def test_tool_name_query_returns_that_tool(retriever):
    retrieved = retriever.retrieve("read_file")

    assert names(retrieved) == ["read_file"]


def test_blank_query_returns_no_tools(retriever):
    assert retriever.retrieve("   ") == []


def test_tools_embedded_once(tools, counting_encoder):
    retriever = AegisToolRetriever(tools, counting_encoder, top_k=1)

    for query, _ in EXPECTED:
        retriever.retrieve(query)

    assert counting_encoder.calls("encode_tiers") == [len(tools)]
    assert counting_encoder.calls("encode_with_state") == [1] * len(EXPECTED)


def test_parameter_names_are_embedded(retriever):
    weather = retriever.retriever.retrieve("get_weather")[0].node.get_content()
    files = retriever.retriever.retrieve("read_file")[0].node.get_content()

    assert weather.startswith("get weather: ")
    assert weather.endswith("Parameters: city, day.")
    assert files.endswith("Parameters: path.")


def test_query_engine_tools_are_retrieved(tools, demo_encoder):
    manual = QueryEngineTool.from_defaults(
        ManualEngine(), name="product_manual", description="Answers questions about installing and using the product."
    )
    retriever = AegisToolRetriever([*tools, manual], demo_encoder, top_k=1)

    retrieved = retriever.retrieve("how do I install the product on Windows")

    assert retrieved == [manual]


# llama-index-core 0.14 agents read deprecated pydantic attributes when they
# list their steps with inspect.getmembers.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")
def test_agent_accepts_retriever(retriever):
    agent = FunctionAgent(tool_retriever=retriever, llm=MockLLM())

    agent_tools = asyncio.run(agent.get_tools("will it rain in Oslo tomorrow"))

    assert isinstance(retriever, ObjectRetriever)
    assert names(agent_tools)[0] == "get_weather"


@pytest.mark.parametrize(
    ("make_tools", "options", "error", "message"),
    [
        (lambda tools: [], {}, ValueError, "tools is empty"),
        (lambda tools: tools, {"top_k": 0}, ValueError, r"top_k must be an integer between 1 and the number of tools \(6\), got 0"),
        (lambda tools: tools, {"top_k": 7}, ValueError, "got 7"),
        (lambda tools: tools, {"fast_tier": "1x999"}, TierError, "fast_tier: 1 layer/999d asks for 999 dimensions"),
        (lambda tools: [*tools, tools[0]], {}, ValueError, "tools 0 and 6 are both named 'get_weather'"),
        (lambda tools: [*tools, get_weather], {}, TypeError, "tool 6 is a function, expected a LlamaIndex BaseTool"),
        (
            lambda tools: [FunctionTool.from_defaults(read_file, name="blank", description="  ")],
            {},
            ValueError,
            r"tool 0 \('blank'\) has an empty description",
        ),
    ],
)
def test_invalid_input_raises(tools, demo_encoder, make_tools, options, error, message):
    with pytest.raises(error, match=message):
        AegisToolRetriever(make_tools(tools), demo_encoder, **options)
