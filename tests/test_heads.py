from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from aegis_router import Catalogue, Encoder, HeadError, Index, Router, Thresholds, Tier, Tool
from aegis_router.building import train_index_head
from aegis_router.evaluation import Query, ScoreTable, evaluate, load_queries
from conftest import BENCHMARKS, EXAMPLES
from tiny_models import WORDS, build_tiny_model

HWU64 = BENCHMARKS / "hwu64"

FAST = Tier(1, 32)


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def encoder(tiny_bert_path):
    return Encoder.from_pretrained(tiny_bert_path)


@pytest.fixture(scope="module")
def index(encoder):
    descriptions = random_texts(12, seed=1)
    tools = [Tool(id=f"tool{i}", name=f"tool {i}", description=text) for i, text in enumerate(descriptions)]
    return Index.build(
        Catalogue(tools), encoder, fast_tier=FAST, full_tier=encoder.full_tier, thresholds=Thresholds(margin=0.05)
    )


@pytest.fixture(scope="module")
def headed(index, encoder):
    return train_index_head(index, encoder, random_texts(400, seed=2), epochs=15, seed=0, width=64)


def agreement(router: Router, texts: list[str]) -> float:
    table = ScoreTable.compute(router, [Query(text=text) for text in texts])
    return float((table.fast.argmax(axis=1) == table.full.argmax(axis=1)).mean())


@pytest.mark.slow
def test_head_raises_agreement_on_training_distribution(demo_encoder):
    # Tiny random models make poor judges here: their 1-layer and full-depth
    # vectors already agree. The demo model's 1-layer pass does not.
    texts = [query.text for query in load_queries(HWU64 / "queries.jsonl", split="train")]
    random.Random(0).shuffle(texts)
    train, held_out = texts[:2000], texts[2000:2300]
    rows = [json.loads(line) for line in (HWU64 / "tools.jsonl").read_text().splitlines()]
    catalogue = Catalogue(Tool(id=row["id"], name=row["name"], description=row["description"]) for row in rows)
    plain = Index.build(catalogue, demo_encoder, fast_tier=Tier(1, 384), thresholds=Thresholds(margin=0.05))
    headed = train_index_head(plain, demo_encoder, train, include_catalogue=False, epochs=12, seed=0)

    without = agreement(Router(plain, demo_encoder), held_out)
    with_head = agreement(Router(headed, demo_encoder), held_out)
    assert with_head > without + 0.05, (without, with_head)


def test_full_tier_identical_with_and_without_head(index, headed, encoder):
    texts = random_texts(20, seed=4)
    plain = Router(index, encoder, margin=10.0)
    with_head = Router(headed, encoder, margin=10.0)
    for text in texts:
        a, b = plain.route(text), with_head.route(text)
        assert a.escalated and b.escalated
        assert a.tool_id == b.tool_id
        assert a.score == b.score
    np.testing.assert_array_equal(index.matrix(index.full_tier), headed.matrix(headed.full_tier))


def test_router_can_ignore_head(index, headed, encoder):
    text = random_texts(1, seed=5)[0]
    np.testing.assert_array_equal(
        Router(headed, encoder, use_head=False).score([text], FAST), Router(index, encoder).score([text], FAST)
    )


def test_head_round_trips_through_save(headed, encoder, tmp_path):
    headed.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert loaded.head_info == headed.head_info
    for name, tensor in headed.head.state_dict().items():
        torch.testing.assert_close(loaded.head.state_dict()[name], tensor, rtol=0, atol=0)
    text = random_texts(1, seed=6)[0]
    np.testing.assert_array_equal(Router(loaded, encoder).score([text], FAST), Router(headed, encoder).score([text], FAST))


def test_training_is_reproducible(index, encoder):
    texts = random_texts(120, seed=7)
    first = train_index_head(index, encoder, texts, epochs=3, seed=11, width=32)
    second = train_index_head(index, encoder, texts, epochs=3, seed=11, width=32)
    other = train_index_head(index, encoder, texts, epochs=3, seed=12, width=32)
    assert first.head_info.fingerprint == second.head_info.fingerprint
    assert first.head_info.fingerprint != other.head_info.fingerprint


def test_head_for_other_model_is_refused(headed, tmp_path):
    other_path = build_tiny_model(tmp_path / "other", "bert", seed=1)
    other = Encoder.from_pretrained(other_path)
    with pytest.raises(HeadError, match="fingerprint"):
        headed.head_info.check(other.fingerprint, headed.fast_tier, headed.full_tier)


def test_head_for_other_tier_is_refused(headed, encoder, tmp_path):
    headed.save(tmp_path / "index")
    manifest_file = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["head"]["fast_tier"] = {"layers": 2, "dim": 32}
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(HeadError, match="2 layers"):
        Index.load(tmp_path / "index")


def test_head_survives_incremental_rebuild(headed, encoder):
    tools = list(headed.catalogue) + [Tool(id="extra", name="extra", description="send the report to the team")]
    rebuilt = Index.build(
        Catalogue(tools), encoder, fast_tier=FAST, full_tier=encoder.full_tier, thresholds=headed.thresholds, previous=headed
    )
    assert rebuilt.head_info == headed.head_info
    assert rebuilt.vectors[rebuilt.head_key].shape[0] == rebuilt.entry_count


def test_too_few_texts_rejected(index, encoder):
    with pytest.raises(HeadError, match="at least 20"):
        train_index_head(index, encoder, ["show the logs"], include_catalogue=False)


def test_evaluate_reports_with_and_without_head(headed, encoder):
    queries = [Query(text=text, gold=("tool0",)) for text in random_texts(30, seed=8)]
    result = evaluate(Router(headed, encoder), queries)
    assert result.head == headed.head_info.fingerprint
    assert set(result.without_head) == {"fast", "cascade"}
    assert "escalation_rate" in result.without_head["cascade"]
    assert result.to_dict()["cascade_without_head"] == result.without_head["cascade"]
