"""AegisToolSelector on the demo model: selection quality, index caching, retrieval hooks and errors."""

from __future__ import annotations

import pytest
from aegis_router import CatalogueError, Selection, TierError
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from langchain_aegis import AegisToolSelector, ToolSelection, to_aegis_tool


@pytest.fixture(scope="module")
def selector(all_tools, demo_encoder) -> AegisToolSelector:
    """One selector over the fourteen tools, shared by the tests that do not change its tools or count its builds."""
    return AegisToolSelector(list(all_tools), model=demo_encoder, k=3)


@pytest.fixture
def small_tools() -> list[StructuredTool]:
    """Four fresh tools, so that the cache tests build small indexes."""
    return [
        make_tool("home_lights", "Turn the lights on or off in a room of the house."),
        make_tool("weather", "Get the weather forecast for a city."),
        make_tool("send_sms", "Send a text message to a phone number."),
        make_tool("timer", "Start a countdown timer for a number of minutes."),
    ]


def make_tool(name: str, description: str, schema: type[BaseModel] | None = None) -> StructuredTool:
    """Build a fresh tool, so that tests which change one in place share nothing with other tests."""

    def run(**arguments) -> str:
        return name

    if schema is None:

        class Arguments(BaseModel):
            query: str

        schema = Arguments
    return StructuredTool.from_function(func=run, name=name, description=description, args_schema=schema)


# Tasks the demo model ranks clearly first: in a check of these phrasings the
# expected tool led the runner-up by at least 0.07 cosine at the full tier.
CLEAR_TASKS = [
    ("will it rain in Oslo this weekend?", "get_weather_forecast"),
    ("how much is 250 euros in Japanese yen", "convert_currency"),
    ("send Anna an email with the quarterly report", "send_email"),
    ("schedule a meeting with Tom on Friday at 3pm", "create_calendar_event"),
    ("translate 'good morning' into French", "translate_text"),
    ("file a bug about the login page crashing in our repo", "create_github_issue"),
    ("reserve a table for four at Luigi's tonight at 8", "book_restaurant"),
    ("remind me to call mom tomorrow at noon", "set_reminder"),
    ("what is the share price of Tesla today", "get_stock_price"),
    ("play the new Taylor Swift album", "play_music"),
    ("where is my parcel 1Z999AA1", "track_package"),
    ("make this photo 800 by 600 pixels", "resize_image"),
    ("find articles about the history of the printing press online", "search_web"),
]

# Phrasings the demo model does not rank first, which is why an agent binds
# several tools rather than one.
HARDER_TASKS = [
    ("email the quarterly report to Anna", "send_email"),
    ("write an email to my landlord about the broken heater", "send_email"),
    ("how many orders did we get last month, query the database", "run_sql_query"),
]


@pytest.mark.parametrize(("task", "expected"), CLEAR_TASKS)
def test_select_ranks_expected_tool_first(selector, tools, task, expected):
    chosen = selector.select(task)

    assert chosen[0].name == expected
    assert any(chosen[0] is original for original in tools), "select must return the caller's own tool objects"


@pytest.mark.parametrize(("task", "expected"), HARDER_TASKS)
def test_select_keeps_expected_tool_in_top_three(selector, task, expected):
    assert expected in [chosen.name for chosen in selector.select(task, k=3)]


def test_select_returns_k_distinct_tools(selector, tools):
    chosen = selector.select("what's the weather like in Rome", k=5)

    assert len(chosen) == 5
    assert len({item.name for item in chosen}) == 5


def test_k_above_tool_count_returns_all(selector, tools):
    chosen = selector.select("play some jazz", k=100)

    assert sorted(item.name for item in chosen) == sorted(item.name for item in tools)


def test_details_describe_the_decision(selector, demo_encoder):
    details = selector.select_with_details("track my parcel from the post office", k=2)

    assert isinstance(details, ToolSelection)
    assert isinstance(details.selection, Selection)
    assert details.names == [candidate.tool.id for candidate in details.selection.candidates]
    assert selector.last_selection is details

    record = details.to_dict()
    assert record["tools"] == details.names
    assert record["scores"] == sorted(record["scores"], reverse=True)
    assert record["tier"] in (selector.router.fast_tier.key, selector.router.full_tier.key)
    assert isinstance(record["escalated"], bool)


def test_aegis_tool_keeps_argument_schema(tools):
    by_name = {item.name: item for item in tools}

    weather = to_aegis_tool(by_name["get_weather_forecast"])
    parcel = to_aegis_tool(by_name["track_package"])
    image = to_aegis_tool(by_name["resize_image"])

    assert weather.id == weather.name == "get_weather_forecast"
    assert weather.description.startswith("Get the weather forecast")
    assert set(weather.parameters["properties"]) == {"city", "days"}
    assert parcel.parameters["properties"]["tracking_number"]["description"].startswith("The carrier's")
    assert set(image.parameters["properties"]) == {"path", "width", "height"}


def test_same_tools_reuse_index(small_tools, demo_encoder):
    selector = AegisToolSelector(small_tools, model=demo_encoder, k=2)
    router = selector.router
    selector.select("switch off the kitchen lights")
    selector.tools = list(small_tools)
    selector.select("switch off the kitchen lights")
    selector.tools = list(reversed(small_tools))
    selector.select("switch off the kitchen lights")

    assert selector.index_builds == 1
    assert selector.router is router


def test_added_tool_triggers_reindex(small_tools, demo_encoder):
    selector = AegisToolSelector(small_tools, model=demo_encoder, k=1)
    selector.select("water the garden this evening")
    assert "water_plants" not in selector.tool_registry

    selector.tools = [*small_tools, make_tool("water_plants", "Water the house plants and the garden with the sprinklers.")]
    chosen = selector.select("water the garden this evening")

    assert selector.index_builds == 2
    assert chosen[0].name == "water_plants"


def test_description_change_in_place_triggers_reindex(small_tools, demo_encoder):
    selector = AegisToolSelector(small_tools, model=demo_encoder, k=1)
    selector.select("is it going to snow tomorrow")

    small_tools[0].description = "Lock or unlock the front door of the house."
    selector.select("is it going to snow tomorrow")

    assert selector.index_builds == 2
    assert "Lock or unlock" in selector.router.index.catalogue.get("home_lights").description


def test_schema_change_triggers_reindex(demo_encoder):
    class CityArguments(BaseModel):
        city: str

    class PlaceArguments(BaseModel):
        latitude: float
        longitude: float

    description = "Get the weather forecast for a place."
    selector = AegisToolSelector([make_tool("weather", description, CityArguments)], model=demo_encoder)
    first = selector.router

    selector.tools = [make_tool("weather", description, PlaceArguments)]
    second = selector.router

    assert selector.index_builds == 2
    assert second is not first
    assert set(second.index.catalogue.get("weather").parameters["properties"]) == {"latitude", "longitude"}


def test_recent_tool_lists_stay_cached(small_tools, demo_encoder):
    selector = AegisToolSelector(small_tools, model=demo_encoder, cache_size=2)

    selector.select("switch off the kitchen lights")
    selector.select("switch off the kitchen lights", tools=small_tools[:2])
    selector.select("switch off the kitchen lights")

    assert selector.index_builds == 2


def test_cache_size_one_evicts_previous_list(small_tools, demo_encoder):
    selector = AegisToolSelector(small_tools, model=demo_encoder, cache_size=1)

    selector.select("switch off the kitchen lights")
    selector.select("switch off the kitchen lights", tools=small_tools[:2])
    selector.select("switch off the kitchen lights")

    assert selector.index_builds == 3


def test_tools_argument_limits_the_choice(selector, tools):
    subset = [item for item in tools if item.name in ("play_music", "get_stock_price", "track_package")]

    chosen = selector.select("where is my parcel", k=5, tools=subset)

    assert [item.name for item in chosen][0] == "track_package"
    assert {item.name for item in chosen} == {"play_music", "get_stock_price", "track_package"}
    assert len(selector.tools) == len(tools)


def test_retrieval_hooks_work_as_structured_tool(selector):
    # LangGraph-style "many tools" agents wrap the retrieval function in a
    # StructuredTool, call it with the model's query and look the names up in
    # the tool registry.
    retrieval = StructuredTool.from_function(func=selector.retrieve_tools, coroutine=selector.aretrieve_tools)

    names = retrieval.invoke({"query": "book a table at an Italian restaurant"})

    assert retrieval.name == "retrieve_tools"
    assert set(retrieval.args) == {"query"}
    assert retrieval.description.startswith("Find the tools that fit a task")
    assert len(names) == selector.k
    assert names[0] == "book_restaurant"
    assert all(isinstance(selector.tool_registry[name], BaseTool) for name in names)


@pytest.mark.anyio
async def test_async_selection_matches_sync(selector):
    task = "convert 100 dollars to euros"

    assert [item.name for item in await selector.aselect(task)] == [item.name for item in selector.select(task)]
    assert await selector.aretrieve_tools(task) == selector.retrieve_tools(task)


def test_empty_tool_list_rejected(demo_encoder):
    with pytest.raises(CatalogueError, match="tools is empty"):
        AegisToolSelector([], model=demo_encoder)


def test_duplicate_names_rejected(tools, demo_encoder):
    duplicate = make_tool("send_email", "Send a text message to a phone number.")

    with pytest.raises(CatalogueError, match=r"duplicate tool name 'send_email' at positions 2 and 14"):
        AegisToolSelector([*tools, duplicate], model=demo_encoder)


@pytest.mark.parametrize("description", ["", "   "])
def test_tool_without_description_rejected(tools, demo_encoder, description):
    blank = make_tool("mystery", "placeholder")
    blank.description = description

    with pytest.raises(CatalogueError, match=r"tools\[14\]: tool 'mystery' has no description"):
        AegisToolSelector([*tools, blank], model=demo_encoder)


def test_plain_function_rejected(demo_encoder):
    def lookup(city: str) -> str:
        """Look up a city."""
        return city

    with pytest.raises(TypeError, match=r"tools\[0\]: expected a LangChain BaseTool, got function"):
        AegisToolSelector([lookup], model=demo_encoder)


def test_single_tool_instead_of_list_rejected(tools, demo_encoder):
    with pytest.raises(TypeError, match="tools must be a list of LangChain tools"):
        AegisToolSelector(tools[0], model=demo_encoder)


def test_bad_tool_list_assignment_keeps_old_tools(selector, tools):
    with pytest.raises(CatalogueError):
        selector.tools = []

    assert len(selector.tools) == len(tools)


@pytest.mark.parametrize(("k", "error"), [(0, ValueError), (-2, ValueError), ("3", TypeError), (True, TypeError)])
def test_invalid_k_rejected(selector, tools, demo_encoder, k, error):
    with pytest.raises(error, match="k must be"):
        selector.select("send an email", k=k)
    with pytest.raises(error, match="k must be"):
        AegisToolSelector(tools, model=demo_encoder, k=k)


def test_blank_task_rejected(selector):
    with pytest.raises(ValueError, match="task is empty"):
        selector.select("  ")


def test_fast_tier_too_deep_rejected(tools, demo_encoder):
    with pytest.raises(TierError, match=r"fast_tier 9x384 does not fit the model"):
        AegisToolSelector(tools, model=demo_encoder, fast_tier="9x384")


@pytest.mark.parametrize("margin", [-0.1, "0.1", float("nan")])
def test_invalid_margin_rejected(tools, demo_encoder, margin):
    with pytest.raises(ValueError, match="margin must be a number of at least 0"):
        AegisToolSelector(tools, model=demo_encoder, margin=margin)


def test_margin_sets_escalation_threshold(all_tools, demo_encoder):
    # A margin of 0 never escalates and one above any cosine gap always does.
    never = AegisToolSelector(list(all_tools), model=demo_encoder, k=3, margin=0.0)
    always = AegisToolSelector(list(all_tools), model=demo_encoder, k=3, margin=10.0)
    task = "where is my parcel"

    assert never.select_with_details(task).selection.escalated is False
    assert always.select_with_details(task).selection.escalated is True


def test_unknown_argument_rejected(tools, demo_encoder):
    with pytest.raises(TypeError, match="top_k"):
        AegisToolSelector(tools, model=demo_encoder, top_k=3)

