from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from aegis_router import Encoder, Index, Router
from aegis_router.cli import main
from tiny_models import build_tiny_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"

# Descriptions use the tiny models' word-level vocabulary.
TOOLS = [
    {"id": "logs", "name": "read logs", "description": "show the logs of the service", "examples": ["show the error logs"]},
    {"id": "email", "name": "send email", "description": "send an email to the user", "examples": ["send the report"]},
    {"id": "weather", "name": "check weather", "description": "show the weather for tomorrow"},
]
TASKS = ["show the error logs of the build", "send an email to the team", "check the weather today"]
RESULT_KEYS = {"task", "tool", "score", "margin", "tier", "escalated", "candidates", "ms"}


@pytest.fixture
def catalogue_file(tmp_path) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump(TOOLS), encoding="utf-8")
    return path


@pytest.fixture
def index_path(tmp_path, catalogue_file, tiny_bert_path, capsys) -> Path:
    output = tmp_path / "idx"
    assert main(["index", str(catalogue_file), "-o", str(output), "--model", str(tiny_bert_path)]) == 0
    capsys.readouterr()
    return output


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def route_json(argv: list[str], capsys) -> list[dict]:
    code, out, err = run(["route", *argv, "--json"], capsys)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


# index


def test_index_writes_folder(tmp_path, catalogue_file, tiny_bert_path, capsys):
    output = tmp_path / "idx"

    code, out, err = run(["index", str(catalogue_file), "-o", str(output), "--model", str(tiny_bert_path)], capsys)

    assert code == 0, err
    assert out.startswith("indexed 3 tools (5 entries)")
    assert str(output) in out
    assert Index.load(output).catalogue.ids == ["logs", "email", "weather"]


def test_index_reuses_unchanged(index_path, catalogue_file, tiny_bert_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="aegis_router.index")

    code, _, err = run(["index", str(catalogue_file), "-o", str(index_path), "--model", str(tiny_bert_path)], capsys)

    assert code == 0, err
    assert "0 tools embedded, 3 reused" in caplog.text


def test_index_rebuild_flag(index_path, catalogue_file, tiny_bert_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="aegis_router.index")
    argv = ["index", str(catalogue_file), "-o", str(index_path), "--model", str(tiny_bert_path), "--rebuild"]

    code, _, err = run(argv, capsys)

    assert code == 0, err
    assert "3 tools embedded, 0 reused" in caplog.text


def test_index_fast_tier_option(tmp_path, catalogue_file, tiny_bert_path, capsys):
    output = tmp_path / "idx"

    code, _, err = run(
        ["index", str(catalogue_file), "-o", str(output), "--model", str(tiny_bert_path), "--fast-tier", "2x16"], capsys
    )

    assert code == 0, err
    assert Index.load(output).fast_tier.key == "2x16"


def test_index_tier_too_deep(tmp_path, catalogue_file, tiny_bert_path, capsys):
    argv = ["index", str(catalogue_file), "-o", str(tmp_path / "idx"), "--model", str(tiny_bert_path), "--fast-tier", "9x32"]

    code, _, err = run(argv, capsys)

    assert code == 2
    assert "9 layers" in err


def test_index_bad_catalogue(tmp_path, tiny_bert_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([TOOLS[0], {"id": "email", "name": "send email"}]), encoding="utf-8")

    code, out, err = run(["index", str(bad), "-o", str(tmp_path / "idx"), "--model", str(tiny_bert_path)], capsys)

    assert code == 2
    assert out == ""
    assert err.startswith("aegis-router: error: ")
    assert str(bad) in err
    assert "entry 1 ('email')" in err
    assert "'description'" in err
    assert not (tmp_path / "idx").exists()


def test_index_missing_catalogue(tmp_path, tiny_bert_path, capsys):
    missing = tmp_path / "absent.yaml"

    code, _, err = run(["index", str(missing), "-o", str(tmp_path / "idx"), "--model", str(tiny_bert_path)], capsys)

    assert code == 2
    assert str(missing) in err
    assert "does not exist" in err


def test_index_refuses_other_folder(tmp_path, catalogue_file, tiny_bert_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me", encoding="utf-8")

    code, _, err = run(["index", str(catalogue_file), "-o", str(folder), "--model", str(tiny_bert_path)], capsys)

    assert code == 2
    assert "not an aegis-router index" in err
    assert (folder / "todo.txt").read_text(encoding="utf-8") == "keep me"


# route


def test_route_json_keys(index_path, capsys):
    results = route_json([str(index_path), *TASKS], capsys)

    assert [result["task"] for result in results] == TASKS
    for result in results:
        assert set(result) >= RESULT_KEYS
        assert set(result["tier"]) == {"layers", "dim"}
        assert result["candidates"]
        for candidate in result["candidates"]:
            assert set(candidate) == {"tool", "score"}


def test_route_json_matches_router(index_path, tiny_bert_path, capsys):
    expected = Router(Index.load(index_path), Encoder.from_pretrained(tiny_bert_path)).route_batch(TASKS)

    results = route_json([str(index_path), *TASKS], capsys)

    for result, want in zip(results, expected, strict=True):
        assert result["tool"] == want.tool_id
        assert result["escalated"] == want.escalated
        assert result["score"] == pytest.approx(want.score, abs=1e-5)
        assert result["tier"] == want.tier.to_dict()


def test_route_single_task(index_path, capsys):
    results = route_json([str(index_path), TASKS[0]], capsys)

    assert len(results) == 1
    assert results[0]["task"] == TASKS[0]


def test_route_reads_stdin(index_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{TASKS[0]}\n\n  {TASKS[1]}  \n"))

    results = route_json([str(index_path)], capsys)

    assert [result["task"] for result in results] == TASKS[:2]


def test_route_k_candidates(index_path, capsys):
    results = route_json([str(index_path), TASKS[0], "--k", "2"], capsys)

    assert len(results[0]["candidates"]) == 2


def test_route_margin_forces_escalation(index_path, capsys):
    results = route_json([str(index_path), *TASKS, "--margin", "10"], capsys)

    assert [result["escalated"] for result in results] == [True, True, True]
    assert results[0]["tier"] == {"layers": 3, "dim": 32}


def test_route_margin_prevents_escalation(index_path, capsys):
    results = route_json([str(index_path), *TASKS, "--margin", "-1"], capsys)

    assert [result["escalated"] for result in results] == [False, False, False]
    assert results[0]["tier"] == {"layers": 1, "dim": 32}


def test_route_min_score_abstains(index_path, capsys):
    results = route_json([str(index_path), *TASKS, "--margin", "10", "--min-score", "1.01"], capsys)

    assert [result["tool"] for result in results] == [None, None, None]


def test_route_text_output(index_path, capsys):
    code, out, err = run(["route", str(index_path), TASKS[0], "--margin", "-1"], capsys)
    chosen = route_json([str(index_path), TASKS[0], "--margin", "-1"], capsys)[0]["tool"]

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == TASKS[0]
    assert lines[1].startswith(f"  -> {chosen}  score ")
    assert "(fast)" in lines[1]


def test_route_missing_index(tmp_path, capsys):
    code, out, err = run(["route", str(tmp_path / "absent"), TASKS[0]], capsys)

    assert code == 2
    assert out == ""
    assert err.startswith("aegis-router: error: ")
    assert "does not exist" in err
    assert "aegis-router index CATALOGUE -o" in err


def test_route_no_tasks(index_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))

    code, _, err = run(["route", str(index_path)], capsys)

    assert code == 2
    assert "no tasks given" in err


def test_route_other_model(index_path, tmp_path, capsys):
    other = build_tiny_model(tmp_path / "other_model", "bert", seed=1)

    code, _, err = run(["route", str(index_path), TASKS[0], "--model", str(other)], capsys)

    assert code == 2
    assert str(other) in err


@pytest.mark.slow
def test_demo_index_and_route(tmp_path, capsys):
    output = tmp_path / "demo-index"
    code, _, err = run(["index", str(EXAMPLES / "tools.yaml"), str(EXAMPLES / "skills"), "-o", str(output)], capsys)
    assert code == 0, err

    results = route_json([str(output), "How many euros is 250 Japanese yen", "Roll production back to the previous release"], capsys)

    assert [result["tool"] for result in results] == ["currency_convert", "deploy_rollback"]


def test_index_forced_mcp_rejects_native_list(tmp_path, capsys):
    catalogue = Path(__file__).resolve().parent.parent / "examples" / "catalogue" / "tools.yaml"
    code, _, err = run(["index", str(catalogue), "-o", str(tmp_path / "idx"), "--format", "mcp"], capsys)
    assert code == 2
    assert "does not look like an MCP tools/list result" in err
    assert not (tmp_path / "idx").exists()


def test_malformed_fast_tier_names_expected_form(tmp_path, capsys):
    catalogue = Path(__file__).resolve().parent.parent / "examples" / "catalogue" / "tools.yaml"
    with pytest.raises(SystemExit):
        main(["index", str(catalogue), "-o", str(tmp_path / "idx"), "--fast-tier", "abc"])
    assert "LAYERSxDIM" in capsys.readouterr().err
