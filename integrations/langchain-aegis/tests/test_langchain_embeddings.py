"""AegisEmbeddings on the demo model: vectors, tiers, batching, async behaviour and errors."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from aegis_router import Tier, TierError
from pydantic import ValidationError

from langchain_aegis import AegisEmbeddings


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def embeddings(demo_encoder) -> AegisEmbeddings:
    return AegisEmbeddings(model="demo")


def test_query_vector_equals_encoder_output(embeddings, demo_encoder):
    vector = embeddings.embed_query("reset my password")
    expected = demo_encoder.encode("reset my password", demo_encoder.full_tier)

    assert len(vector) == demo_encoder.hidden_size
    assert np.allclose(vector, expected, atol=1e-6)


def test_vectors_are_unit_length_python_floats(embeddings):
    vectors = embeddings.embed_documents(["first document", "a second, longer document about tools"])

    assert len(vectors) == 2
    for vector in vectors:
        assert all(type(value) is float for value in vector)
        assert math.isclose(math.fsum(value * value for value in vector), 1.0, rel_tol=1e-4)


def test_related_texts_score_higher(embeddings):
    query = embeddings.embed_query("how do I reset my password")
    related, unrelated = embeddings.embed_documents(
        ["Steps to recover a forgotten account password", "A recipe for banana bread with walnuts"]
    )

    assert cosine(query, related) > cosine(query, unrelated) + 0.2


def test_batch_size_does_not_change_vectors(demo_encoder):
    texts = [f"document {i}: " + "word " * (i % 7 + 1) for i in range(10)]
    one_at_a_time = AegisEmbeddings(model="demo", batch_size=1).embed_documents(texts)
    all_at_once = AegisEmbeddings(model="demo", batch_size=64).embed_documents(texts)

    assert np.allclose(one_at_a_time, all_at_once, atol=1e-5)


def test_tier_sets_depth_and_width(demo_encoder):
    shallow = AegisEmbeddings(model="demo", tier="2x128")
    deep_narrow = AegisEmbeddings(model="demo", tier="6x128")
    text = "book a table for two tonight"

    vector = shallow.embed_query(text)
    assert len(vector) == 128
    assert shallow.dimensions == 128
    assert np.allclose(vector, demo_encoder.encode(text, Tier(2, 128)), atol=1e-6)
    assert not np.allclose(vector, deep_narrow.embed_query(text), atol=1e-3)


def test_query_tier_applies_to_queries_only(demo_encoder):
    embeddings = AegisEmbeddings(model="demo", tier="6x256", query_tier="2x256")
    text = "track my parcel"

    assert embeddings.resolved_tier == Tier(6, 256)
    assert embeddings.resolved_query_tier == Tier(2, 256)
    assert np.allclose(embeddings.embed_query(text), demo_encoder.encode(text, Tier(2, 256)), atol=1e-6)
    assert np.allclose(embeddings.embed_documents([text])[0], demo_encoder.encode(text, Tier(6, 256)), atol=1e-6)


def test_default_tiers_are_full_model(embeddings, demo_encoder):
    assert embeddings.tier is None
    assert embeddings.resolved_tier == demo_encoder.full_tier
    assert embeddings.resolved_query_tier == demo_encoder.full_tier


@pytest.mark.parametrize("tier", [Tier(3, 64), "3x64", "3/64", {"layers": 3, "dim": 64}])
def test_tier_accepted_forms(tier, demo_encoder):
    assert AegisEmbeddings(model="demo", tier=tier).resolved_tier == Tier(3, 64)


def test_instances_share_one_encoder(demo_encoder):
    first = AegisEmbeddings(model="demo")
    second = AegisEmbeddings(model="demo", tier="1x32")

    assert first.encoder is demo_encoder
    assert second.encoder is demo_encoder


def test_empty_document_list_returns_empty(embeddings):
    assert embeddings.embed_documents([]) == []


def test_tier_too_deep_raises_tier_error(demo_encoder):
    with pytest.raises(TierError, match=r"tier 12x384 does not fit the model.*at most 6 layers and 384 dimensions"):
        AegisEmbeddings(model="demo", tier="12x384")


def test_query_tier_too_wide_raises_tier_error(demo_encoder):
    with pytest.raises(TierError, match=r"query_tier 6x512 does not fit the model"):
        AegisEmbeddings(model="demo", query_tier="6x512")


def test_query_tier_other_width_rejected(demo_encoder):
    with pytest.raises(ValueError, match=r"query_tier 2x64 keeps 64 dimensions but the document tier 6x128 keeps 128"):
        AegisEmbeddings(model="demo", tier="6x128", query_tier="2x64")


def test_unknown_argument_rejected(demo_encoder):
    with pytest.raises(ValidationError, match="model_name") as caught:
        AegisEmbeddings(model_name="demo")

    assert caught.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"tier": "six by 384"}, "tier"),
        ({"tier": "0x384"}, "tier"),
    ],
)
def test_invalid_argument_rejected(arguments, field, demo_encoder):
    with pytest.raises(ValidationError) as caught:
        AegisEmbeddings(model="demo", **arguments)

    assert caught.value.errors()[0]["loc"] == (field,)


def test_tier_cannot_change_after_construction(embeddings):
    with pytest.raises(ValidationError, match="frozen"):
        embeddings.tier = Tier(1, 384)


@pytest.mark.parametrize("as_text", [True, False])
def test_missing_model_folder_raises(tmp_path, as_text):
    folder = tmp_path / "no-such-model"

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        AegisEmbeddings(model=str(folder) if as_text else folder)


def test_blank_texts_rejected(embeddings):
    with pytest.raises(ValueError, match="positions 1 are empty"):
        embeddings.embed_documents(["fine", "   "])
    with pytest.raises(ValueError, match="text is empty"):
        embeddings.embed_query("")


def test_string_instead_of_list_rejected(embeddings):
    with pytest.raises(TypeError, match="use embed_query for one text"):
        embeddings.embed_documents("a single string")


@pytest.mark.anyio
async def test_async_matches_sync(embeddings):
    texts = ["open a support ticket", "what's the weather in Lisbon"]

    assert np.allclose(await embeddings.aembed_documents(texts), embeddings.embed_documents(texts), atol=1e-6)
    assert np.allclose(await embeddings.aembed_query(texts[0]), embeddings.embed_query(texts[0]), atol=1e-6)


@pytest.mark.anyio
async def test_concurrent_queries_return_own_vectors(embeddings):
    texts = [f"task number {i} for the agent" for i in range(8)]

    vectors = await asyncio.gather(*(embeddings.aembed_query(text) for text in texts))

    for text, vector in zip(texts, vectors):
        assert np.allclose(vector, embeddings.embed_query(text), atol=1e-6)


@pytest.mark.anyio
async def test_event_loop_runs_during_aembed_documents(embeddings):
    # A ticker coroutine records a time stamp every 5 ms. Had aembed_documents
    # run the model on the event loop's thread, no tick could land while it ran.
    texts = [f"document {i} describes a tool that an agent could call for some task" for i in range(128)]
    ticks: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = time.perf_counter()
    vectors = await embeddings.aembed_documents(texts)
    finished = time.perf_counter()
    done.set()
    await ticker

    ticks_during = [stamp for stamp in ticks if started < stamp < finished]
    assert len(vectors) == len(texts)
    assert finished - started > 0.05, "the batch finished too fast to tell whether the loop was blocked"
    assert len(ticks_during) >= 3
