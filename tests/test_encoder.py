from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from sample_texts import SENTENCES
from transformers import AutoModel

from aegis_router import Encoder, Tier, TierError, UnsupportedModelError

SHORT = "show the logs"
TEXTS = [
    "search the code for the bug in the build and show the error logs of the deploy service today",
    SHORT,
    "create a ticket for the team",
    "send an email to the user with the weather report for tomorrow morning and the summary of the meeting",
    "find the pdf",
]


def reference_vectors(path, texts, layers, dim):
    """Embed with transformers' own forward: raw hidden_states[k] before the last layer, the final output at full depth."""
    encoder = Encoder.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = encoder._pad(encoder._tokenize(list(texts), None))
    with torch.inference_mode():
        output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    hidden = output.last_hidden_state if layers == model.config.num_hidden_layers else output.hidden_states[layers]
    mask = batch.attention_mask.unsqueeze(-1).float()
    pooled = ((hidden * mask).sum(1) / mask.sum(1))[:, :dim]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_encode_matches_transformers_at_every_depth(kind, tiny_modernbert_path, tiny_bert_path):
    path = tiny_modernbert_path if kind == "modernbert" else tiny_bert_path
    encoder = Encoder.from_pretrained(path)
    for layers in range(1, encoder.depth + 1):
        for dim in (8, encoder.hidden_size):
            expected = reference_vectors(path, TEXTS, layers, dim)
            actual = encoder.encode(TEXTS, Tier(layers, dim))
            np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=f"{kind} at {layers}x{dim}")


def test_full_depth_modernbert_applies_final_norm(tiny_modernbert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path)
    full = encoder.encode(TEXTS, encoder.full_tier)

    state = encoder._run(encoder._pad(encoder._tokenize(TEXTS, None)), encoder.depth)
    raw = torch.nn.functional.normalize(
        (state.hidden * state.attention_mask.unsqueeze(-1)).sum(1) / state.attention_mask.sum(1, keepdim=True), dim=-1
    ).numpy()
    assert not np.allclose(full, raw, atol=1e-4)


def test_modernbert_texts_exceed_sliding_window(tiny_modernbert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path)
    window = encoder.backbone.config.sliding_window
    longest = max(len(ids) for ids in encoder._tokenize(TEXTS, None))
    assert longest > 2 * window


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_resume_equals_fresh_encode(kind, tiny_modernbert_path, tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path if kind == "modernbert" else tiny_bert_path)
    shallow = Tier(1, 16)
    vectors, state = encoder.encode_with_state(TEXTS, shallow)
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS, shallow), atol=1e-5)

    for layers in range(1, encoder.depth + 1):
        tier = Tier(layers, encoder.hidden_size)
        np.testing.assert_allclose(encoder.resume(state, tier), encoder.encode(TEXTS, tier), atol=1e-5)


def test_resume_subset_of_rows(tiny_modernbert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path)
    _, state = encoder.encode_with_state(TEXTS, Tier(2, 32))
    rows = [1, 4]
    resumed = encoder.resume(state.rows(rows), encoder.full_tier)
    fresh = encoder.encode([TEXTS[i] for i in rows], encoder.full_tier)
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)
    assert state.rows(rows).hidden.shape[1] == max(len(encoder._tokenize([TEXTS[i]], None)[0]) for i in rows)


def test_resume_to_shallower_tier_is_rejected(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    _, state = encoder.encode_with_state(TEXTS, Tier(2, 32))
    with pytest.raises(TierError, match="between 2 and 3"):
        encoder.resume(state, Tier(1, 32))


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_vectors_independent_of_batch_and_padding(kind, tiny_modernbert_path, tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path if kind == "modernbert" else tiny_bert_path)
    for tier in (Tier(1, 32), encoder.full_tier):
        alone = encoder.encode([SHORT], tier)
        in_batch = encoder.encode(TEXTS, tier)[1:2]
        one_per_batch = encoder.encode(TEXTS, tier, batch_size=1)[1:2]
        np.testing.assert_allclose(in_batch, alone, atol=1e-5)
        np.testing.assert_allclose(one_per_batch, alone, atol=1e-5)


def test_vectors_are_normalised_float32(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    vectors = encoder.encode(TEXTS, Tier(2, 12))
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), 12)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_single_string_gives_vector(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    vector = encoder.encode(SHORT, Tier(1, 32))
    assert vector.shape == (32,)


def test_encode_tiers_matches_separate_calls(tiny_modernbert_path):
    encoder = Encoder.from_pretrained(tiny_modernbert_path)
    tiers = [Tier(1, 8), Tier(3, 32), encoder.full_tier]
    together = encoder.encode_tiers(TEXTS, tiers, batch_size=2)
    for tier in tiers:
        np.testing.assert_allclose(together[tier], encoder.encode(TEXTS, tier), atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_cls_and_max_pooling(pooling, tmp_path):
    from tiny_models import build_tiny_model

    path = build_tiny_model(tmp_path / pooling, "bert", pooling=pooling)
    encoder = Encoder.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = encoder._pad(encoder._tokenize(TEXTS, None))
    with torch.inference_mode():
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        pooled = hidden.masked_fill(batch.attention_mask.unsqueeze(-1) == 0, -1e9).amax(1)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)


def test_exit_norm_option_and_contract(tiny_modernbert_path, tmp_path):
    raw = Encoder.from_pretrained(tiny_modernbert_path)
    normed = Encoder.from_pretrained(tiny_modernbert_path, exit_norm="final_norm")
    tier = Tier(2, 32)
    assert not np.allclose(raw.encode(TEXTS, tier), normed.encode(TEXTS, tier), atol=1e-4)
    np.testing.assert_allclose(raw.encode(TEXTS, raw.full_tier), normed.encode(TEXTS, normed.full_tier), atol=1e-6)

    contract_path = tmp_path / "contract"
    shutil.copytree(tiny_modernbert_path, contract_path)
    config = json.loads((contract_path / "config.json").read_text())
    config["representation_contract"] = {"early_exit": "final_norm"}
    (contract_path / "config.json").write_text(json.dumps(config))
    from_contract = Encoder.from_pretrained(contract_path)
    np.testing.assert_allclose(from_contract.encode(TEXTS, tier), normed.encode(TEXTS, tier), atol=1e-6)

    overridden = Encoder.from_pretrained(contract_path, exit_norm="raw")
    np.testing.assert_allclose(overridden.encode(TEXTS, tier), raw.encode(TEXTS, tier), atol=1e-6)


def test_invalid_contract_is_rejected(tiny_modernbert_path, tmp_path):
    path = tmp_path / "bad-contract"
    shutil.copytree(tiny_modernbert_path, path)
    config = json.loads((path / "config.json").read_text())
    config["representation_contract"] = "layernorm-ish"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="representation_contract"):
        Encoder.from_pretrained(path)


def test_final_norm_option_rejected_for_bert(tiny_bert_path):
    with pytest.raises(UnsupportedModelError, match="pre-LayerNorm"):
        Encoder.from_pretrained(tiny_bert_path, exit_norm="final_norm")


def test_unsupported_architecture_names_model_type(tmp_path):
    from tiny_models import save_sentence_model
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    path = save_sentence_model(tmp_path / "gpt2", model.eval())
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*modernbert.*bert"):
        Encoder.from_pretrained(path)


def test_tier_deeper_or_wider_than_model(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    with pytest.raises(TierError, match="4 layers.*has 3"):
        encoder.encode(TEXTS, Tier(4, 32))
    with pytest.raises(TierError, match="64 dimensions.*produces 32"):
        encoder.encode(TEXTS, Tier(1, 64))


def test_tier_validation():
    with pytest.raises(TierError):
        Tier(0, 64)
    with pytest.raises(TypeError):
        Tier(1.5, 64)
    assert Tier.parse("6x64") == Tier(6, 64)
    with pytest.raises(TierError, match="LAYERSxDIM"):
        Tier.parse("six")


def test_empty_and_blank_texts_name_positions(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    with pytest.raises(ValueError, match="positions 1, 3"):
        encoder.encode(["show the logs", "", "find the pdf", "   "])
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([])


def test_non_string_texts_raise_type_error(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    with pytest.raises(TypeError, match=r"1 \(int\)"):
        encoder.encode(["show the logs", 3])
    with pytest.raises(TypeError):
        encoder.encode(b"bytes are not text")


def test_long_texts_truncated_with_one_warning(tiny_bert_path, caplog):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    long_text = " ".join(["logs"] * 200)
    with caplog.at_level(logging.WARNING, logger="aegis_router.encoder"):
        vectors = encoder.encode([long_text, long_text, SHORT])
    warnings = [record for record in caplog.records if "truncated" in record.getMessage()]
    assert len(warnings) == 1
    assert "2 of 3" in warnings[0].getMessage()
    assert "48 tokens" in warnings[0].getMessage()
    assert vectors.shape == (3, 32)

    truncated = encoder._tokenize([long_text], None)[0]
    assert len(truncated) == 48
    assert truncated[-1] == 3  # [SEP] kept, as the tokenizer's own truncation does


def test_unknown_prompt_name(tiny_bert_path):
    encoder = Encoder.from_pretrained(tiny_bert_path)
    with pytest.raises(ValueError, match="prompt 'query' is not defined"):
        encoder.encode(TEXTS, prompt_name="query")


def test_demo_model_matches_sentence_transformers(demo_encoder):
    from sentence_transformers import SentenceTransformer

    from aegis_router.model_files import demo_model_folder

    sentences = [
        *SENTENCES,
        "a",
        "Ein kurzer deutscher Satz über das Wetter.",
        "这是一个中文句子。",
        "x " * 300,
    ]
    model = SentenceTransformer(str(demo_model_folder()), device="cpu")
    expected = model.encode(sentences, normalize_embeddings=True)
    actual = demo_encoder.encode(sentences, demo_encoder.full_tier)
    cosines = (actual * expected).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
