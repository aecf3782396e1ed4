from __future__ import annotations

import asyncio
import json
import math
import pickle
import threading

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding, SimilarityMode
from pydantic import ValidationError

from aegis_router import Tier, TierError
from llama_index.embeddings.aegis import AegisEmbedding

QUERY = "how do I reset my password"
RELATED = "To reset a forgotten password, open the login page and click 'Forgot password'."
UNRELATED = "The bakery sells sourdough bread and croissants every morning."
TEXTS = [
    "The quarterly revenue grew by eight percent.",
    "Parental leave is sixteen weeks for every employee.",
    "Restart the router if the VPN keeps disconnecting.",
    "The API returns error 429 when the rate limit is exceeded.",
    "Invoices are due thirty days after delivery.",
    "The cafeteria closes at three on Fridays.",
    "Backups run every night at two.",
    "New hires get a laptop on their first day.",
    "The office is closed on public holidays.",
    "Use the staging cluster for load tests.",
]


def norm(vector) -> float:
    return float(np.linalg.norm(np.asarray(vector)))


def test_embedding_is_base_embedding(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)

    assert isinstance(embedding, BaseEmbedding)
    assert AegisEmbedding.class_name() == "AegisEmbedding"
    assert embedding.to_dict()["class_name"] == "AegisEmbedding"
    assert embedding.model_name == "demo"


def test_defaults_load_demo_model_at_full_tier(demo_encoder):
    embedding = AegisEmbedding()

    assert embedding.encoder is demo_encoder
    assert embedding.tier == demo_encoder.full_tier
    assert embedding.query_tier == demo_encoder.full_tier


def test_query_and_text_match_encoder(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)

    query = embedding.get_query_embedding(QUERY)
    text = embedding.get_text_embedding(RELATED)

    assert len(query) == demo_encoder.hidden_size
    assert len(text) == demo_encoder.hidden_size
    assert norm(query) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(query, demo_encoder.encode(QUERY, demo_encoder.full_tier), atol=1e-6)
    np.testing.assert_allclose(text, demo_encoder.encode(RELATED, demo_encoder.full_tier), atol=1e-6)


def test_query_tier_differs_from_text_tier(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder, tier="6x384", query_tier=Tier(3, 384))

    query = embedding.get_query_embedding(QUERY)
    text = embedding.get_text_embedding(QUERY)

    np.testing.assert_allclose(query, demo_encoder.encode(QUERY, Tier(3, 384)), atol=1e-6)
    np.testing.assert_allclose(text, demo_encoder.encode(QUERY, Tier(6, 384)), atol=1e-6)
    assert not np.allclose(query, text, atol=1e-3)


def test_narrow_tier_sets_vector_width(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder, tier={"layers": 4, "dim": 128})

    vector = embedding.get_text_embedding(RELATED)

    assert len(vector) == 128
    assert norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert embedding.query_tier == Tier(4, 128)


def test_batch_honours_embed_batch_size(counting_encoder):
    embedding = AegisEmbedding(encoder=counting_encoder, embed_batch_size=4)

    vectors = embedding.get_text_embedding_batch(TEXTS)

    assert counting_encoder.calls("encode_tiers") == [4, 4, 2]
    assert len(vectors) == len(TEXTS)
    expected = counting_encoder.encode(TEXTS, counting_encoder.full_tier)
    np.testing.assert_allclose(np.asarray(vectors), expected, atol=1e-5)


def test_async_batch_honours_embed_batch_size(counting_encoder):
    embedding = AegisEmbedding(encoder=counting_encoder, embed_batch_size=3)

    vectors = asyncio.run(embedding.aget_text_embedding_batch(TEXTS))

    assert sorted(counting_encoder.calls("encode_tiers")) == [1, 3, 3, 3]
    expected = counting_encoder.encode(TEXTS, counting_encoder.full_tier)
    np.testing.assert_allclose(np.asarray(vectors), expected, atol=1e-5)


def test_async_methods_match_sync(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder, query_tier="2x384")

    async def embed_all():
        return (
            await embedding.aget_query_embedding(QUERY),
            await embedding.aget_text_embedding(RELATED),
            await embedding.aget_text_embedding_batch([RELATED, UNRELATED]),
        )

    query, text, batch = asyncio.run(embed_all())

    np.testing.assert_allclose(query, embedding.get_query_embedding(QUERY), atol=1e-6)
    np.testing.assert_allclose(text, embedding.get_text_embedding(RELATED), atol=1e-6)
    np.testing.assert_allclose(batch, embedding.get_text_embedding_batch([RELATED, UNRELATED]), atol=1e-5)


def test_async_runs_off_event_loop(counting_encoder):
    # The encoder waits until the event loop sets `release`. If encoding ran on
    # the loop's thread, the loop could not set it and the wait would time out.
    started = threading.Event()
    release = threading.Event()

    def wait_for_loop() -> None:
        started.set()
        if not release.wait(timeout=10):
            raise TimeoutError("the event loop was blocked while encoding")

    counting_encoder.before_encode = wait_for_loop
    embedding = AegisEmbedding(encoder=counting_encoder)

    async def embed_while_loop_runs():
        task = asyncio.create_task(embedding.aget_query_embedding(QUERY))
        await asyncio.to_thread(started.wait, 10)
        release.set()
        return await task, threading.get_ident()

    vector, loop_thread = asyncio.run(embed_while_loop_runs())

    assert len(vector) == counting_encoder.hidden_size
    assert counting_encoder.threads
    assert loop_thread not in counting_encoder.threads


def test_similarity_ranks_related_text_higher(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)
    query = embedding.get_query_embedding(QUERY)
    related, unrelated = embedding.get_text_embedding_batch([RELATED, UNRELATED])

    cosine_related = embedding.similarity(query, related)
    cosine_unrelated = embedding.similarity(query, unrelated)

    assert cosine_related > cosine_unrelated + 0.2
    # Unit vectors: dot product equals cosine, and |a - b| = sqrt(2 - 2 cos).
    assert embedding.similarity(query, related, SimilarityMode.DOT_PRODUCT) == pytest.approx(cosine_related, abs=1e-5)
    euclidean = embedding.similarity(query, related, SimilarityMode.EUCLIDEAN)
    assert euclidean == pytest.approx(-math.sqrt(2 - 2 * cosine_related), abs=1e-4)


def test_mean_of_queries_is_aggregated(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)
    queries = [QUERY, "I forgot my login password"]

    aggregated = embedding.get_agg_embedding_from_queries(queries)

    expected = np.mean([embedding.get_query_embedding(query) for query in queries], axis=0)
    np.testing.assert_allclose(aggregated, expected, atol=1e-6)


def test_vector_index_retrieves_matching_document(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)
    documents = [Document(text=text) for text in [RELATED, UNRELATED, *TEXTS]]
    index = VectorStoreIndex.from_documents(documents, embed_model=embedding)

    nodes = index.as_retriever(similarity_top_k=1).retrieve(QUERY)

    assert [node.get_content() for node in nodes] == [RELATED]


def test_settings_round_trip_without_model(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder, tier="5x256", query_tier="2x256", embed_batch_size=7)

    data = embedding.to_dict()
    text = embedding.to_json()
    from_dict = AegisEmbedding.from_dict(data)
    from_json = AegisEmbedding.from_json(text)

    assert json.loads(text) == data
    assert data["tier"] == {"layers": 5, "dim": 256}
    assert data["query_tier"] == {"layers": 2, "dim": 256}
    assert len(text) < 1000
    for restored in (from_dict, from_json):
        assert restored.to_dict() == data
        assert restored.encoder is demo_encoder
        np.testing.assert_allclose(
            restored.get_query_embedding(QUERY), embedding.get_query_embedding(QUERY), atol=1e-6
        )


def test_pickle_leaves_out_weights(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder, query_tier="3x384", embed_batch_size=5)

    payload = pickle.dumps(embedding)
    restored = pickle.loads(payload)

    assert len(payload) < 10_000
    assert restored.to_dict() == embedding.to_dict()
    np.testing.assert_allclose(restored.get_query_embedding(QUERY), embedding.get_query_embedding(QUERY), atol=1e-6)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"tier": "7x384"}, TierError, "tier: 7 layers/384d asks for 7 layers"),
        ({"tier": Tier(6, 512)}, TierError, "use at most 6x384"),
        ({"query_tier": "9x384"}, TierError, "query_tier: 9 layers"),
        ({"tier": "deep"}, TierError, "invalid tier 'deep'"),
        ({"tier": 6}, TypeError, "tier must be a Tier"),
        ({"tier": "6x128", "query_tier": "6x384"}, ValueError, "same width"),
        ({"model_name": "other-model"}, ValueError, "does not match the given encoder"),
    ],
)
def test_invalid_settings_raise(demo_encoder, options, error, message):
    with pytest.raises(error, match=message):
        AegisEmbedding(encoder=demo_encoder, **options)


def test_unknown_option_is_rejected(demo_encoder):
    with pytest.raises(ValidationError, match="unknown_option"):
        AegisEmbedding(encoder=demo_encoder, unknown_option=1)


def test_batch_size_out_of_range_is_rejected(demo_encoder):
    with pytest.raises(ValidationError, match="embed_batch_size"):
        AegisEmbedding(encoder=demo_encoder, embed_batch_size=0)


def test_wrong_encoder_type_is_rejected():
    with pytest.raises(TypeError, match="must be an aegis_router.Encoder"):
        AegisEmbedding(encoder="demo")


def test_blank_model_name_is_rejected():
    with pytest.raises(ValueError, match="model_name must be a non-empty string"):
        AegisEmbedding(model_name="  ")


def test_blank_text_is_rejected(demo_encoder):
    embedding = AegisEmbedding(encoder=demo_encoder)

    with pytest.raises(ValueError, match="empty or whitespace only"):
        embedding.get_text_embedding("   ")
