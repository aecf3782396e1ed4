"""Tiny random sentence-transformers models, built on disk for the tests.

Each model folder looks like a real sentence-transformers model: a
transformers backbone, a fast tokenizer made with the ``tokenizers`` library
(a word-level vocabulary), ``modules.json``, a pooling config and
``sentence_bert_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an of to and in on for with is are was be it this that run open read write find search send show "
    "code file page logs deploy ticket calendar meeting email weather money rate image pdf text data table "
    "user team bug fix error service build test release version note alert memory task tool agent query "
    "today tomorrow week morning report summary list create update delete close start stop check help"
).split()


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def tiny_modernbert_config(**overrides) -> ModernBertConfig:
    # A sliding window of +-4 tokens, so test texts of 10+ tokens exercise it.
    # The large initializer range makes every layer move the vectors visibly, so
    # a skipped or wrong layer fails the exactness tests.
    settings = dict(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        local_attention=8,
        global_attn_every_n_layers=3,
        max_position_embeddings=128,
        pad_token_id=0,
        initializer_range=0.2,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
    )
    settings.update(overrides)
    return ModernBertConfig(**settings)


def tiny_bert_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        initializer_range=0.2,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def save_sentence_model(
    folder: Path, model: torch.nn.Module, *, pooling: str = "mean", max_seq_length: int = 48, extra_config: dict | None = None
) -> Path:
    """Save a backbone and tokenizer as a sentence-transformers model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    if extra_config:
        config = json.loads((folder / "config.json").read_text())
        config.update(extra_config)
        (folder / "config.json").write_text(json.dumps(config))

    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": model.config.hidden_size,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
            }
        )
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


def build_tiny_model(folder: Path, kind: str, seed: int = 0, **options) -> Path:
    torch.manual_seed(seed)
    if kind == "modernbert":
        model = ModernBertModel(tiny_modernbert_config())
    elif kind == "bert":
        model = BertModel(tiny_bert_config(), add_pooling_layer=False)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    return save_sentence_model(folder, model.eval(), **options)
