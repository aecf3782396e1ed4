from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sample_texts import SENTENCES
from transformers import AutoModel

from aegis_router import Encoder, Tier
from aegis_router.lean import (
    FloatLinear,
    Int8Linear,
    LeanBertBackbone,
    LeanModernBertBackbone,
    quantize_linear_modules,
)

SHORT = "show the logs"
TEXTS = [
    "search the code for the bug in the build and show the error logs of the deploy service today",
    SHORT,
    "create a ticket for the team",
    "send an email to the user with the weather report for tomorrow morning and the summary of the meeting",
    "find the pdf",
]
# Five tokens each with [CLS] and [SEP], so a batch of them has no padding.
EQUAL_LENGTH = ["show the logs", "find the pdf", "open the file", "send the email"]



@pytest.fixture(scope="module")
def strong_paths(tmp_path_factory):
    """Tiny random models with 10x the default initializer range.

    With the default range (0.02) the layers of a tiny model barely move the
    embedding output, so a wrong layer would still match the reference within
    1e-5. At 0.2 each layer moves the pooled vector visibly (checked below).
    """
    from tiny_models import (
        save_sentence_model,
        tiny_bert_config,
        tiny_modernbert_config,
    )
    from transformers import BertModel, ModernBertModel

    torch.manual_seed(0)
    modernbert = ModernBertModel(tiny_modernbert_config(initializer_range=0.2)).eval()
    bert = BertModel(tiny_bert_config(initializer_range=0.2), add_pooling_layer=False).eval()
    folder = tmp_path_factory.mktemp("strong")
    return {
        "modernbert": save_sentence_model(folder / "modernbert", modernbert),
        "bert": save_sentence_model(folder / "bert", bert),
    }


@pytest.fixture(scope="module")
def encoders(strong_paths):
    """Lean and transformers-runtime encoders of both strong tiny models, float32 and int8, loaded once."""
    loaded = {}
    for kind, path in strong_paths.items():
        for runtime in ("lean", "transformers"):
            for quantize in (None, "int8"):
                loaded[kind, runtime, quantize] = Encoder.from_pretrained(path, runtime=runtime, quantize=quantize)
    return loaded


@pytest.fixture(scope="module")
def demo_transformers():
    return Encoder.from_pretrained("demo", runtime="transformers")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=context)
    assert cosines(actual, expected).min() >= 0.99999, context


def assert_close_int8_vectors(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    # The two runtimes differ by float rounding (about 1e-7) before each int8
    # quantization, which now and then moves a value across a rounding
    # boundary: one int8 step, about 1% of that token's largest activation.
    np.testing.assert_allclose(actual, expected, atol=1e-3, err_msg=context)
    assert cosines(actual, expected).min() >= 0.9999, context


def hidden_reference(path, texts, layers):
    """Pooled vectors from transformers' own forward with output_hidden_states; full depth uses the final output."""
    encoder = Encoder.from_pretrained(path, runtime="transformers")
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = encoder._pad(encoder._tokenize(list(texts), None))
    with torch.inference_mode():
        output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    hidden = output.last_hidden_state if layers == model.config.num_hidden_layers else output.hidden_states[layers]
    mask = batch.attention_mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_lean_is_the_default_runtime(encoders, tiny_modernbert_path, tiny_bert_path):
    assert isinstance(Encoder.from_pretrained(tiny_modernbert_path).backbone, LeanModernBertBackbone)
    assert isinstance(Encoder.from_pretrained(tiny_bert_path).backbone, LeanBertBackbone)
    assert encoders["bert", "lean", None].runtime == "lean"
    assert encoders["bert", "transformers", None].runtime == "transformers"
    assert not isinstance(encoders["modernbert", "transformers", None].backbone, LeanModernBertBackbone)
    assert encoders["bert", "lean", "int8"].quantization == "int8"
    assert encoders["bert", "lean", None].quantization is None


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_lean_matches_transformers_at_every_depth(kind, encoders):
    lean = encoders[kind, "lean", None]
    reference = encoders[kind, "transformers", None]
    batches = {"padded batch": TEXTS, "single task": [TEXTS[0]], "equal lengths": EQUAL_LENGTH}
    for layers in range(1, lean.depth + 1):
        tier = Tier(layers, lean.hidden_size)
        for name, texts in batches.items():
            context = f"{kind}, {name}, {layers} layers"
            assert_same_vectors(lean.encode(texts, tier), reference.encode(texts, tier), context)


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_strong_models_layers_move_vectors(kind, encoders):
    lean = encoders[kind, "lean", None]
    batch = lean._pad(lean._tokenize(TEXTS, None))
    embedded = lean.vectors(lean._run(batch, 0), lean.hidden_size)
    for layers in range(1, lean.depth + 1):
        moved = np.abs(lean.encode(TEXTS, Tier(layers, lean.hidden_size)) - embedded).max()
        assert moved > 0.1, f"{kind}: {layers} layers move vectors by only {moved}"


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
@pytest.mark.parametrize("models", ["strong", "conftest"])
def test_lean_matches_transformers_hidden_states(kind, models, strong_paths, tiny_modernbert_path, tiny_bert_path):
    if models == "strong":
        path = strong_paths[kind]
    else:
        path = tiny_modernbert_path if kind == "modernbert" else tiny_bert_path
    lean = Encoder.from_pretrained(path, runtime="lean")
    for layers in range(1, lean.depth + 1):
        expected = hidden_reference(path, TEXTS, layers)
        actual = lean.encode(TEXTS, Tier(layers, lean.hidden_size))
        assert_same_vectors(actual, expected, f"{models} {kind} at {layers} layers")


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_resume_across_runtimes(kind, quantize, encoders):
    lean = encoders[kind, "lean", quantize]
    reference = encoders[kind, "transformers", quantize]
    check = assert_same_vectors if quantize is None else assert_close_int8_vectors
    for first, second in ((lean, reference), (reference, lean)):
        _, state = first.encode_with_state(TEXTS, Tier(1, 16))
        for layers in range(1, lean.depth + 1):
            tier = Tier(layers, lean.hidden_size)
            context = f"{kind} {quantize}: {first.runtime} state resumed by {second.runtime} to {layers} layers"
            check(second.resume(state, tier), first.encode(TEXTS, tier), context)
            check(second.resume(state, tier), second.encode(TEXTS, tier), context)


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_resume_leaves_stored_state_unchanged(kind, encoders):
    lean = encoders[kind, "lean", None]
    _, state = lean.encode_with_state(TEXTS, Tier(1, 32))
    before = state.hidden.clone()
    first = lean.resume(state, lean.full_tier)
    second = lean.resume(state, lean.full_tier)
    assert torch.equal(state.hidden, before)
    np.testing.assert_array_equal(first, second)


def test_lean_modernbert_masks(encoders):
    backbone = encoders["modernbert", "lean", None].backbone
    window = backbone.window
    both = {"full_attention", "sliding_attention"}

    short = backbone._masks(torch.ones(1, window + 1, dtype=torch.long), both)
    assert short == {"full_attention": None, "sliding_attention": None}

    long_mask = backbone._masks(torch.ones(1, window + 2, dtype=torch.long), both)
    assert long_mask["full_attention"] is None
    band = long_mask["sliding_attention"]
    assert band.shape == (window + 2, window + 2)
    assert not band[0, window + 1]
    assert band[0, window]

    padded = torch.ones(2, 3 * window, dtype=torch.long)
    padded[1, 2:] = 0
    masks = backbone._masks(padded, both)
    assert masks["full_attention"].shape == (2, 1, 1, 3 * window)
    assert masks["sliding_attention"].shape == (2, 1, 3 * window, 3 * window)
    assert masks["sliding_attention"].any(dim=-1).all(), "every query row must see at least one key"


def test_padding_rows_stay_finite(encoders):
    lean = encoders["modernbert", "lean", None]
    # The short text's padding runs far past the window, so its padding queries see no real key.
    texts = [" ".join(["logs"] * 40), "find"]
    _, state = lean.encode_with_state(texts, lean.full_tier)
    assert state.hidden.shape[1] > 2 * lean.backbone.window + 3
    assert torch.isfinite(state.hidden).all()


def test_rotary_table_cached_and_sliced(strong_paths):
    lean = Encoder.from_pretrained(strong_paths["modernbert"])
    backbone = lean.backbone
    lean.encode([SHORT])
    tables = {kind: table[0] for kind, table in backbone._rotary.items()}
    assert set(tables) == {"full_attention", "sliding_attention"}

    lean.encode([TEXTS[0]])
    for kind, cos in tables.items():
        assert backbone._rotary[kind][0] is cos, f"{kind} table rebuilt for a length it already covers"

    tokens = 100
    hidden = torch.zeros(1, tokens, lean.hidden_size)
    cos, signed_sin = backbone._rotary_table("sliding_attention", tokens, hidden)
    expected_cos, expected_sin = backbone.model.rotary_emb(hidden, torch.arange(tokens).unsqueeze(0), "sliding_attention")
    half = backbone.head_dim // 2
    torch.testing.assert_close(cos.reshape(tokens, -1), expected_cos[0], rtol=0, atol=0)
    torch.testing.assert_close(signed_sin.reshape(tokens, -1)[:, half:], expected_sin[0, :, half:], rtol=0, atol=0)
    torch.testing.assert_close(signed_sin.reshape(tokens, -1)[:, :half], -expected_sin[0, :, :half], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_model_output_unchanged_after_lean_load(kind, encoders, strong_paths):
    path = strong_paths[kind]
    relaid = encoders[kind, "lean", None].backbone.model
    fresh = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = encoders[kind, "lean", None]._pad(encoders[kind, "lean", None]._tokenize(TEXTS, None))
    with torch.inference_mode():
        expected = fresh(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        actual = relaid(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_roberta_runs_lean(tmp_path):
    from tiny_models import SPECIAL, WORDS, save_sentence_model
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    path = save_sentence_model(tmp_path / "roberta", RobertaModel(config, add_pooling_layer=False).eval())
    lean = Encoder.from_pretrained(path)
    reference = Encoder.from_pretrained(path, runtime="transformers")
    assert isinstance(lean.backbone, LeanBertBackbone)
    for layers in (1, 2):
        tier = Tier(layers, 32)
        assert_same_vectors(lean.encode(TEXTS, tier), reference.encode(TEXTS, tier), f"roberta at {layers} layers")


def test_mpnet_falls_back_to_transformers_runtime(tmp_path, caplog):
    from tiny_models import SPECIAL, WORDS, save_sentence_model
    from transformers import MPNetConfig, MPNetModel

    config = MPNetConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    path = save_sentence_model(tmp_path / "mpnet", MPNetModel(config, add_pooling_layer=False).eval())
    with caplog.at_level(logging.INFO, logger="aegis_router.backbones"):
        encoder = Encoder.from_pretrained(path, runtime="lean")
    assert encoder.runtime == "transformers"
    assert any("transformers runtime" in record.getMessage() and "mpnet" in record.getMessage() for record in caplog.records)
    assert encoder.encode(TEXTS, Tier(1, 32)).shape == (len(TEXTS), 32)


def test_invalid_runtime_and_quantize_rejected(tiny_bert_path):
    with pytest.raises(ValueError, match="runtime 'onnx'.*'lean', 'transformers'"):
        Encoder.from_pretrained(tiny_bert_path, runtime="onnx")
    with pytest.raises(ValueError, match="quantize 'int4'.*'int8'"):
        Encoder.from_pretrained(tiny_bert_path, quantize="int4")


@pytest.mark.parametrize("runtime", ["lean", "transformers"])
def test_int8_needs_float32(runtime, tiny_bert_path):
    with pytest.raises(ValueError, match="float32"):
        Encoder.from_pretrained(tiny_bert_path, dtype="bfloat16", runtime=runtime, quantize="int8")


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_int8_changes_vectors_slightly(kind, encoders):
    float_vectors = encoders[kind, "lean", None].encode(TEXTS)
    int8_vectors = encoders[kind, "lean", "int8"].encode(TEXTS)
    assert np.abs(float_vectors - int8_vectors).max() > 1e-3, "int8 weights were not used"
    assert cosines(float_vectors, int8_vectors).min() > 0.999


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_int8_lean_matches_int8_transformers(kind, encoders):
    lean = encoders[kind, "lean", "int8"]
    reference = encoders[kind, "transformers", "int8"]
    for layers in range(1, lean.depth + 1):
        tier = Tier(layers, lean.hidden_size)
        assert_close_int8_vectors(lean.encode(TEXTS, tier), reference.encode(TEXTS, tier), f"{kind} int8 at {layers} layers")


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_int8_resume_equals_fresh_int8_encode(kind, encoders):
    lean = encoders[kind, "lean", "int8"]
    _, state = lean.encode_with_state(TEXTS, Tier(1, 16))
    for layers in range(1, lean.depth + 1):
        tier = Tier(layers, lean.hidden_size)
        assert_same_vectors(lean.resume(state, tier), lean.encode(TEXTS, tier), f"{kind} int8 resume to {layers}")

    rows = [1, 4]
    resumed = lean.resume(state.rows(rows), lean.full_tier)
    fresh = lean.encode([TEXTS[i] for i in rows], lean.full_tier)
    assert_same_vectors(resumed, fresh, f"{kind} int8 resume of rows {rows}")


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
def test_int8_vectors_independent_of_batch(kind, encoders):
    lean = encoders[kind, "lean", "int8"]
    alone = lean.encode([SHORT])
    in_batch = lean.encode(TEXTS)[1:2]
    assert_same_vectors(in_batch, alone, f"{kind} int8 in a padded batch")


def test_int8_linear_close_to_float():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(7, 64)
    quantized = Int8Linear.quantize(linear.weight, linear.bias)
    with torch.inference_mode():
        expected = linear(x)
        actual = quantized(x)
    error = (actual - expected).abs().max() / expected.abs().max()
    assert 0 < error < 0.02


def test_int8_concatenate_equals_stacked_quantization():
    torch.manual_seed(0)
    parts = [torch.nn.Linear(32, width) for width in (16, 8, 24)]
    stacked = Int8Linear.concatenate([Int8Linear.quantize(part.weight, part.bias) for part in parts])
    whole = Int8Linear.quantize(torch.cat([part.weight for part in parts]), torch.cat([part.bias for part in parts]))
    assert torch.equal(stacked.weight_t, whole.weight_t)
    assert torch.equal(stacked.weight_scale, whole.weight_scale)
    x = torch.randn(5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(stacked(x), whole(x), rtol=0, atol=0)


def test_int8_rows_quantized_independently():
    torch.manual_seed(0)
    quantized = Int8Linear.quantize(torch.randn(16, 32), torch.randn(16))
    row = torch.randn(1, 32)
    loud = torch.randn(3, 32) * 100
    with torch.inference_mode():
        torch.testing.assert_close(quantized(torch.cat([row, loud]))[:1], quantized(row), rtol=0, atol=0)


def test_quantize_linear_modules_replaces_all(tiny_bert_path):
    model = AutoModel.from_pretrained(tiny_bert_path, dtype=torch.float32).eval()
    linears = sum(isinstance(module, torch.nn.Linear) for module in model.modules())
    assert quantize_linear_modules(model) == linears
    assert not any(isinstance(module, torch.nn.Linear) for module in model.modules())


def test_float_linear_matches_torch_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(6, 24)
    lean = FloatLinear(linear.weight.detach().t().contiguous(), linear.bias.detach())
    with torch.inference_mode():
        torch.testing.assert_close(lean(x), linear(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_demo_model_lean_matches_transformers(demo_encoder, demo_transformers):
    assert demo_encoder.runtime == "lean"
    tiers = [Tier(layers, demo_encoder.hidden_size) for layers in range(1, demo_encoder.depth + 1)]
    batches = {"padded batch": SENTENCES, "single task": [SENTENCES[2]], "equal lengths": SENTENCES[:1] * 3}
    for name, texts in batches.items():
        lean = demo_encoder.encode_tiers(texts, tiers)
        reference = demo_transformers.encode_tiers(texts, tiers)
        for tier in tiers:
            assert_same_vectors(lean[tier], reference[tier], f"demo, {name}, {tier}")

    _, state = demo_encoder.encode_with_state(SENTENCES, Tier(1, 384))
    resumed = demo_transformers.resume(state, demo_transformers.full_tier)
    assert_same_vectors(resumed, demo_transformers.encode(SENTENCES), "demo lean state resumed by transformers")


@pytest.mark.slow
def test_demo_model_int8_quality(demo_encoder):
    int8_encoder = Encoder.from_pretrained("demo", quantize="int8")
    tiers = [Tier(1, 384), Tier(6, 384), Tier(6, 64)]
    float_vectors = demo_encoder.encode_tiers(SENTENCES, tiers)
    int8_vectors = int8_encoder.encode_tiers(SENTENCES, tiers)
    for tier in tiers:
        similarity = cosines(int8_vectors[tier], float_vectors[tier])
        assert similarity.min() > 0.98, f"{tier}: {similarity.min()}"
        assert similarity.mean() > 0.99, f"{tier}: {similarity.mean()}"


@pytest.fixture(scope="module")
def tiny_router(tiny_bert_path):
    from aegis_router import Router, Tool

    tools = [
        Tool(id="logs", name="logs", description="show the error logs of a service", examples=("show the logs",)),
        Tool(id="ticket", name="ticket", description="create a ticket for the team", examples=("open a bug ticket",)),
        Tool(id="email", name="email", description="send an email to a user", examples=("send the report",)),
    ]
    return Router.from_catalogue(tools, Encoder.from_pretrained(tiny_bert_path), fast_tier=Tier(1, 16))


def test_bench_transformers_runtime_modes(tiny_router):
    from aegis_router.bench import run_bench

    report = run_bench(tiny_router, TEXTS, warmup=1, batch_size=2, baselines=("transformers-runtime",))
    assert set(report.timings) == {"fast", "full", "cascade", "transformers-fast", "transformers-cascade"}
    assert report.settings["runtime"] == "lean"
    ratios = report.to_dict()["ratios"]
    assert ratios["transformers_cascade_p50_over_cascade_p50"] > 0
    assert ratios["transformers_fast_p50_over_fast_p50"] > 0


def test_bench_skips_runtime_modes_on_transformers(tiny_bert_path, tiny_router):
    from aegis_router import Router
    from aegis_router.bench import run_bench

    encoder = Encoder.from_pretrained(tiny_bert_path, runtime="transformers")
    router = Router(tiny_router.index, encoder)
    report = run_bench(router, TEXTS, warmup=1, batch_size=2, baselines=("transformers-runtime",))
    assert set(report.timings) == {"fast", "full", "cascade"}
    assert any("already runs the transformers runtime" in note for note in report.notes)


def test_bench_rejects_unknown_baseline(tiny_router):
    from aegis_router.bench import run_bench

    with pytest.raises(ValueError, match="unknown baselines 'onnx'.*semantic-router"):
        run_bench(tiny_router, TEXTS, baselines=("onnx",))


def test_bench_semantic_router_mode(tiny_router):
    pytest.importorskip("semantic_router")
    from aegis_router.bench import run_bench

    report = run_bench(tiny_router, TEXTS, warmup=1, batch_size=2, baselines=("semantic-router",))
    assert "semantic-router" in report.timings
    assert report.timings["semantic-router"].p50 > 0
    assert report.to_dict()["ratios"]["semantic_router_p50_over_cascade_p50"] > 0
