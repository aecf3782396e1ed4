from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from aegis_router import Catalogue, Encoder, Index, Router, Tool, route
from aegis_router.building import build_index

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"

# In-scope tasks worded unlike the catalogue's examples, plus two that no tool serves.
TASKS = [
    "How many euros is 250 Japanese yen",
    "Pull the text out of this scanned contract PDF",
    "Roll production back to the previous release",
    "Will it rain in Lisbon over the weekend?",
    "Remind me to call the dentist at 5pm",
    "Find the function that validates JWT tokens in our repository, it rejects tokens that expired a second ago",
    "Write the release notes for version 4.2",
    "bake me a chocolate cake",
    "who won the world cup in 1998",
]
OUT_OF_SCOPE = ["bake me a chocolate cake", "who won the world cup in 1998", "what is 17 times 23"]
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def demo_index(demo_encoder) -> Index:
    catalogue = Catalogue.load(EXAMPLES / "tools.yaml", EXAMPLES / "skills")
    return Router.from_catalogue(catalogue, demo_encoder).index


@pytest.fixture(scope="module")
def router(demo_index, demo_encoder) -> Router:
    return Router(demo_index, demo_encoder)


def scores_by_id(router: Router, scores: np.ndarray) -> dict[str, float]:
    return dict(zip(router.index.catalogue.ids, scores.tolist()))


def assert_same_results(actual, expected) -> None:
    for got, want in zip(actual, expected, strict=True):
        assert got.task == want.task
        assert got.tool_id == want.tool_id, got.task
        assert got.escalated == want.escalated, got.task
        assert got.score == pytest.approx(want.score, abs=SCORE_TOLERANCE), got.task
        assert [c.tool.id for c in got.candidates] == [c.tool.id for c in want.candidates], got.task


# Escalation


def test_low_margin_never_escalates(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=-1)

    results = router.route_batch(TASKS)

    assert [result.escalated for result in results] == [False] * len(TASKS)
    assert {result.tier for result in results} == {router.fast_tier}


def test_high_margin_always_escalates(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=10)

    results = router.route_batch(TASKS)

    assert [result.escalated for result in results] == [True] * len(TASKS)
    assert {result.tier for result in results} == {router.full_tier}


def test_fast_min_score_escalates(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=-1, fast_min_score=1.01)

    results = router.route_batch(TASKS)

    assert [result.escalated for result in results] == [True] * len(TASKS)


@pytest.mark.parametrize("task", TASKS[:7])
def test_escalated_equals_full_tier(demo_index, demo_encoder, task):
    router = Router(demo_index, demo_encoder, margin=10, min_score=-1)

    result = router.route(task)
    direct = scores_by_id(router, router.score([task], router.full_tier)[0])

    assert result.tool_id == max(direct, key=direct.get)
    assert result.score == pytest.approx(direct[result.tool_id], abs=SCORE_TOLERANCE)
    for candidate in result.candidates:
        assert candidate.score == pytest.approx(direct[candidate.tool.id], abs=SCORE_TOLERANCE), candidate.tool.id


@pytest.mark.parametrize("task", TASKS[:7])
def test_fast_equals_fast_tier(demo_index, demo_encoder, task):
    router = Router(demo_index, demo_encoder, margin=-1)

    result = router.route(task)
    direct = scores_by_id(router, router.score([task], router.fast_tier)[0])

    assert result.tool_id == max(direct, key=direct.get)
    assert result.score == pytest.approx(direct[result.tool_id], abs=SCORE_TOLERANCE)


def test_escalation_resumes_fast_state(demo_index, demo_encoder, monkeypatch):
    router = Router(demo_index, demo_encoder, margin=10)
    backbone = demo_encoder.backbone
    real_run_layers = backbone.run_layers
    spans = []

    def record_span(hidden, attention_mask, start, stop):
        spans.append((start, stop))
        return real_run_layers(hidden, attention_mask, start, stop)

    monkeypatch.setattr(backbone, "run_layers", record_span)
    result = router.route(TASKS[0])

    assert result.escalated
    assert spans == [(0, router.fast_tier.layers), (router.fast_tier.layers, router.full_tier.layers)]


def test_batch_escalates_unsure_rows(demo_index, demo_encoder):
    # A margin between the tasks' fast-tier gaps splits them, and only the tasks whose gap is below it escalate.
    default = Router(demo_index, demo_encoder)
    fast = default.score(TASKS, default.fast_tier)
    top_two = -np.sort(-fast, axis=1)[:, :2]
    gaps = top_two[:, 0] - top_two[:, 1]
    order = np.argsort(gaps)
    margin = float(gaps[order[len(order) // 2]] + gaps[order[len(order) // 2 + 1]]) / 2

    results = Router(demo_index, demo_encoder, margin=margin).route_batch(TASKS)

    assert [result.escalated for result in results] == (gaps < margin).tolist()


# Abstention


def test_abstains_below_min_score(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=10, min_score=1.01)

    results = router.route_batch(TASKS)

    assert [result.tool for result in results] == [None] * len(TASKS)
    assert all(result.candidates for result in results)
    assert router.stats.abstained == len(TASKS)


@pytest.mark.parametrize("task", OUT_OF_SCOPE)
def test_out_of_scope_abstains(router, task):
    result = router.route(task)

    assert result.tool is None
    assert result.escalated
    assert result.score < router.thresholds.min_score


def test_abstained_result_dict(router):
    data = router.route(OUT_OF_SCOPE[0]).to_dict()

    assert data["tool"] is None
    assert data["candidates"][0]["tool"] in router.index.catalogue


# Realistic routing on the demo model


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("How many euros is 250 Japanese yen", "currency_convert"),
        ("Pull the text out of this scanned contract PDF", "pdf_to_text"),
        ("Roll production back to the previous release", "deploy_rollback"),
        ("Turn this CSV file into JSON", "csv_to_json"),
        ("Find the code that validates JWT tokens in our repository", "code_search"),
        ("Write the release notes for version 4.2", "release-notes"),
        ("Summarise this meeting transcript into action items", "meeting-summary"),
    ],
)
def test_demo_routes_clear_task(router, task, expected):
    assert router.route(task).tool_id == expected


# Results


def test_candidates_ranked(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, min_score=-1)

    result = router.route(TASKS[3])

    scores = [candidate.score for candidate in result.candidates]
    assert len(scores) == router.candidates
    assert scores == sorted(scores, reverse=True)
    assert result.candidates[0].tool == result.tool
    assert result.margin == pytest.approx(scores[0] - scores[1], abs=1e-6)


def test_candidates_option(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, candidates=2)

    assert len(router.route(TASKS[0]).candidates) == 2


def test_candidates_zero_rejected(demo_index, demo_encoder):
    with pytest.raises(ValueError):
        Router(demo_index, demo_encoder, candidates=0)


def test_caller_thresholds_override(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, min_score=0.4)

    assert router.thresholds.min_score == 0.4
    assert router.thresholds.margin == demo_index.thresholds.margin
    assert router.thresholds.source == "caller"


def test_one_tool_catalogue(demo_encoder):
    tool = Tool(id="weather", name="weather", description="Current weather and forecast for a city.")
    router = Router.from_catalogue([tool], demo_encoder)

    result = router.route("Is it sunny in Oslo?")

    assert result.tool_id == "weather"
    assert result.margin == math.inf
    assert not result.escalated
    assert result.to_dict()["margin"] is None


def test_stats_count_tasks(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=10)

    router.route_batch(TASKS[:3])
    router.route(TASKS[3])

    assert router.stats.tasks == 4
    assert router.stats.escalated == 4
    assert router.stats.escalation_rate == 1.0


# select


def test_select_k_in_order(router):
    selection = router.select(TASKS[1], k=4)

    scores = [candidate.score for candidate in selection.candidates]
    assert len(selection.candidates) == 4
    assert scores == sorted(scores, reverse=True)
    assert len({tool.id for tool in selection.tools}) == 4


def test_select_matches_deciding_tier(router):
    selection = router.select(TASKS[1], k=4)

    direct = scores_by_id(router, router.score([TASKS[1]], selection.tier)[0])
    expected = sorted(direct, key=direct.get, reverse=True)[:4]
    assert [tool.id for tool in selection.tools] == expected


@pytest.mark.parametrize("case", ["zero", "negative", "above tool count"])
def test_select_k_out_of_range(router, case):
    k = {"zero": 0, "negative": -1, "above tool count": len(router.index.catalogue) + 1}[case]

    with pytest.raises(ValueError, match="between 1 and"):
        router.select(TASKS[0], k=k)


def test_select_all_tools(router):
    selection = router.select(TASKS[0], k=len(router.index.catalogue))

    assert len(selection.candidates) == len(router.index.catalogue)
    assert selection.margin == math.inf
    assert not selection.escalated


def test_select_escalates_on_close_cut(demo_index, demo_encoder):
    # Pick the k whose cut is closer than the top-1 gap and a margin between the two gaps.
    # Routing then stays on the fast tier, but selecting k tools escalates.
    task = TASKS[0]
    fast = np.sort(Router(demo_index, demo_encoder).score([task], demo_index.fast_tier)[0])[::-1]
    cut_gaps = {k: float(fast[k - 1] - fast[k]) for k in range(2, 8)}
    k = min(cut_gaps, key=cut_gaps.get)
    top_gap = float(fast[0] - fast[1])
    assert cut_gaps[k] < top_gap
    router = Router(demo_index, demo_encoder, margin=(cut_gaps[k] + top_gap) / 2)

    selection = router.select(task, k=k)

    assert selection.escalated
    assert selection.tier == router.full_tier
    assert not router.route(task).escalated


def test_select_clear_cut_stays_fast(demo_index, demo_encoder):
    task = TASKS[0]
    fast = np.sort(Router(demo_index, demo_encoder).score([task], demo_index.fast_tier)[0])[::-1]
    k = 3
    router = Router(demo_index, demo_encoder, margin=float(fast[k - 1] - fast[k]) / 2)

    assert not router.select(task, k=k).escalated


def test_select_escalated_scores(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder, margin=10)

    selection = router.select(TASKS[4], k=3)
    direct = scores_by_id(router, router.score([TASKS[4]], router.full_tier)[0])

    assert selection.escalated
    assert [tool.id for tool in selection.tools] == sorted(direct, key=direct.get, reverse=True)[:3]
    for candidate in selection.candidates:
        assert candidate.score == pytest.approx(direct[candidate.tool.id], abs=SCORE_TOLERANCE)


# route_batch and threads


def test_batch_equals_single(router):
    batch = router.route_batch(TASKS)
    single = [router.route(task) for task in TASKS]

    assert_same_results(batch, single)


def test_batch_empty_rejected(router):
    with pytest.raises(ValueError):
        router.route_batch([])


def test_threads_match_sequential(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder)
    expected = [router.route(task) for task in TASKS]
    rounds = 4

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda _: [router.route(task) for task in TASKS], range(8 * rounds)))

    for results in runs:
        assert_same_results(results, expected)
    assert router.stats.tasks == len(TASKS) * (1 + 8 * rounds)


def test_threads_batches_match(demo_index, demo_encoder):
    router = Router(demo_index, demo_encoder)
    expected = router.route_batch(TASKS)

    with ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(lambda _: router.route_batch(TASKS), range(12)))

    for results in runs:
        assert_same_results(results, expected)


# Module-level route()

TINY_TOOLS = [
    {"id": "logs", "name": "read logs", "description": "show the logs of the service", "examples": ["show the error logs"]},
    {"id": "email", "name": "send email", "description": "send an email to the user"},
]


def test_route_function_with_router(router):
    assert route(TASKS[2], router).tool_id == router.route(TASKS[2]).tool_id


def test_route_function_with_path(tmp_path, tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    catalogue_file = tmp_path / "tools.yaml"
    catalogue_file.write_text(yaml.safe_dump(TINY_TOOLS), encoding="utf-8")
    index = build_index([catalogue_file], tmp_path / "idx", model=encoder)

    result = route("show the logs", tmp_path / "idx")

    assert result.tool_id == Router(index, encoder).route("show the logs").tool_id
    assert result.escalated == Router(index, encoder).route("show the logs").escalated


def test_route_function_sees_rebuilt_index(tmp_path, tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    catalogue_file = tmp_path / "tools.yaml"
    catalogue_file.write_text(yaml.safe_dump(TINY_TOOLS), encoding="utf-8")
    build_index([catalogue_file], tmp_path / "idx", model=encoder)
    route("show the logs", tmp_path / "idx")

    replacement = [{"id": "weather", "name": "check weather", "description": "show the weather for tomorrow"}]
    catalogue_file.write_text(yaml.safe_dump(replacement), encoding="utf-8")
    build_index([catalogue_file], tmp_path / "idx", model=encoder)

    assert route("show the logs", tmp_path / "idx").tool_id == "weather"


def test_recent_task_cache_returns_earlier_decision(demo_encoder):
    catalogue = Catalogue.load(EXAMPLES / "tools.yaml")
    router = Router.from_catalogue(catalogue, demo_encoder, cache_size=2)
    first = router.route("open the pricing page on our site")
    again = router.route("open the pricing page on our site")
    assert not first.cached
    assert again.cached
    assert again.tool_id == first.tool_id
    assert again.score == first.score
    assert router.stats.cache_hits == 1
    assert router.stats.tasks == 1

    router.route("what is the weather in Oslo")
    router.route("refund order 1234")
    evicted = router.route("open the pricing page on our site")
    assert not evicted.cached


def test_cache_off_by_default(demo_encoder):
    catalogue = Catalogue.load(EXAMPLES / "tools.yaml")
    router = Router.from_catalogue(catalogue, demo_encoder)
    router.route("open the pricing page on our site")
    assert not router.route("open the pricing page on our site").cached
    assert router.stats.cache_hits == 0
