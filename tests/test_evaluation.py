from __future__ import annotations

import json

import numpy as np
import pytest

from aegis_router import Catalogue, Router
from aegis_router.calibration import CalibrationError, calibrate
from aegis_router.cli import main
from aegis_router.evaluation import (
    Query,
    QueryFileError,
    ScoreTable,
    cascade_decisions,
    evaluate,
    load_queries,
)
from conftest import EXAMPLES

TASKS = EXAMPLES / "tasks.jsonl"


@pytest.fixture(scope="module")
def router(demo_encoder):
    catalogue = Catalogue.load(EXAMPLES / "catalogue" / "tools.yaml", EXAMPLES / "catalogue" / "skills")
    return Router.from_catalogue(catalogue, demo_encoder)


@pytest.fixture(scope="module")
def queries():
    return [query for query in load_queries(TASKS) if query.lang in ("en", "de", "fr")]


@pytest.fixture(scope="module")
def table(router, queries):
    return ScoreTable.compute(router, queries)


@pytest.mark.parametrize("margin", [0.0, 0.03, 0.058, 0.2])
def test_replayed_cascade_equals_router(router, queries, table, margin):
    live = Router(router.index, router.encoder, margin=margin)
    chosen, _, escalated = cascade_decisions(table, margin, live.thresholds.min_score, live.thresholds.fast_min_score)
    ids = router.index.catalogue.ids
    for row, query in enumerate(queries):
        result = live.route(query.text)
        assert result.escalated == bool(escalated[row]), query.text
        assert result.tool_id == (ids[chosen[row]] if chosen[row] >= 0 else None), query.text


def test_top1_matches_routed_results(router, queries, table):
    result = evaluate(router, queries, table=table)
    in_scope = [query for query in queries if query.gold]
    correct = sum(router.route(query.text).tool_id in query.gold for query in in_scope)
    assert result.cascade["top1"] == pytest.approx(correct / len(in_scope))


def test_metrics_are_consistent(router, queries, table):
    result = evaluate(router, queries, table=table)
    for name in ("fast", "full", "cascade"):
        row = getattr(result, name)
        recalls = [row[f"recall@{k}"] for k in (1, 3, 5, 10)]
        assert recalls == sorted(recalls), name
        assert row["recall@1"] <= row["mrr"] <= 1.0, name
        assert 0.0 <= row["top1"] <= 1.0, name
    assert 0.0 <= result.cascade["escalation_rate"] <= 1.0
    assert result.n == len(queries)
    assert set(result.by_language) == {"de", "en", "fr"}


def test_full_tier_beats_one_layer_on_english(router, queries, table):
    english = [query for query in queries if query.lang == "en"]
    result = evaluate(router, english)
    assert result.full["top1"] > result.fast["top1"]


def test_abstention_measured_on_out_of_scope(router, queries, table):
    strict = Router(router.index, router.encoder, min_score=2.0, margin=10.0)
    result = evaluate(strict, queries, table=table)
    assert result.cascade["abstention_recall"] == 1.0
    assert result.cascade["top1"] == 0.0


def test_calibrate_with_labels_meets_tolerance(table):
    fitted = calibrate(table, mode="labels", tolerance=0.5)
    chosen, _, escalated = cascade_decisions(
        table, fitted.thresholds.margin, fitted.thresholds.min_score, fitted.thresholds.fast_min_score
    )
    gold = table.gold_mask()
    out_of_scope = ~gold.any(axis=1)
    picked = chosen >= 0
    correct = np.where(out_of_scope, ~picked, picked & gold[np.arange(len(chosen)), np.maximum(chosen, 0)])
    assert correct.mean() >= fitted.full_quality - 0.005 - 1e-9
    assert escalated.mean() == pytest.approx(fitted.chosen.escalation_rate)
    assert fitted.thresholds.source == "calibration"
    assert fitted.thresholds.calibration["queries"] == len(table.queries)


def test_calibrate_escalates_least_among_feasible(table):
    fitted = calibrate(table, mode="agreement", agreement=0.95)
    better = [p for p in fitted.curve if p.quality >= 0.95 and p.escalation_rate < fitted.chosen.escalation_rate]
    assert better == []


def test_calibrate_without_labels_keeps_agreement(router, table):
    unlabelled = ScoreTable(
        tuple(Query(text=query.text) for query in table.queries), table.tool_ids, table.fast, table.full
    )
    fitted = calibrate(unlabelled, agreement=0.9, min_score=router.thresholds.min_score)
    assert fitted.mode == "agreement"
    assert fitted.chosen.quality >= 0.9


def test_calibrate_labels_mode_needs_gold(table):
    unlabelled = ScoreTable(tuple(Query(text="a task") for _ in table.queries), table.tool_ids, table.fast, table.full)
    with pytest.raises(CalibrationError, match="gold"):
        calibrate(unlabelled, mode="labels")


def test_query_file_errors(tmp_path, router):
    with pytest.raises(QueryFileError, match="does not exist"):
        load_queries(tmp_path / "missing.jsonl")

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "gold": []}\n{not json}\n')
    with pytest.raises(QueryFileError, match="line 2"):
        load_queries(broken)

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"text": "open the page", "gold": ["no_such_tool"]}) + "\n")
    with pytest.raises(QueryFileError, match="no_such_tool"):
        ScoreTable.compute(router, load_queries(unknown))


def test_plain_text_queries_are_unlabelled(tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("open the pricing page\n\nfind my notes\n")
    queries = load_queries(tasks)
    assert [query.text for query in queries] == ["open the pricing page", "find my notes"]
    assert all(query.gold is None for query in queries)


def test_candidates_restrict_choice(router):
    query = Query(text="what will the weather be tomorrow in Paris", gold=["web_search"], candidates=["web_search", "email_send"])
    table = ScoreTable.compute(router, [query])
    allowed = {router.index.catalogue.ids.index(tool) for tool in query.candidates}
    assert int(table.full.argmax()) in allowed
    assert np.isinf(table.full).sum() == len(router.index.catalogue) - 2


@pytest.mark.slow
def test_cli_evaluate_calibrate_and_plot(tmp_path, capsys):
    index = tmp_path / "index"
    catalogue = EXAMPLES / "catalogue"
    assert main(["index", str(catalogue / "tools.yaml"), str(catalogue / "skills"), "-o", str(index)]) == 0

    metrics_file = tmp_path / "metrics.json"
    plot_file = tmp_path / "trade-off.png"
    assert main(["evaluate", str(index), str(TASKS), "--json", str(metrics_file), "--plot", str(plot_file)]) == 0
    written = json.loads(metrics_file.read_text())
    assert set(written) >= {"fast", "full", "cascade", "n"}
    for name in ("fast", "full", "cascade"):
        assert {"top1", "recall@5", "mrr"} <= set(written[name])
    assert "escalation_rate" in written["cascade"]
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["calibrate", str(index), str(TASKS), "--tolerance", "1.0"]) == 0
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["thresholds"]["source"] == "calibration"
    assert manifest["thresholds"]["calibration"]["queries"] == written["n"]

    capsys.readouterr()
    assert main(["route", str(index), "open the pricing page on our marketing site", "--json"]) == 0
    routed = json.loads(capsys.readouterr().out)
    assert routed["tool"] == "browser_open_page"


def test_bench_times_every_mode(router):
    from aegis_router.bench import run_bench

    tasks = ["open the pricing page", "what is the weather in Oslo", "refund order 1234", "find the login bug ticket"]
    report = run_bench(router, tasks, warmup=1, batch_size=2)
    assert set(report.timings) == {"fast", "full", "cascade", "sentence-transformers"}
    for timing in report.timings.values():
        assert 0 < timing.p50 <= timing.p95 <= timing.p99
        assert timing.throughput > 0
    assert report.to_dict()["ratios"]["full_p50_over_fast_p50"] > 0
