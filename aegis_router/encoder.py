"""The 2D Matryoshka encoder: embed text at any (layers, dim) tier and resume a shallow pass.

:meth:`Encoder.encode` runs only the layers a tier asks for, pools, cuts the
vector to the tier's width and L2-normalises it. :meth:`Encoder.encode_with_state`
also returns the hidden state after those layers, and :meth:`Encoder.resume`
continues that state to a deeper tier, so escalating never repeats the shallow
layers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import Backbone, ExitNorm, Quantization, Runtime, backbone_for
from .errors import TierError, UnsupportedModelError
from .model_files import (
    SentenceModelConfig,
    fingerprint_folder,
    read_sentence_config,
    resolve_model_folder,
)
from .tiers import Tier

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROGRESS_MIN_BATCHES = 8


@dataclass(frozen=True)
class EncoderState:
    """The hidden state of a batch after ``layers`` layers, enough to resume to any deeper tier.

    ``hidden`` is ``(batch, tokens, hidden_size)``; ``attention_mask`` is
    ``(batch, tokens)`` with 1 for real tokens. Masks, rotary tables and
    position biases are rebuilt from the mask when resuming, so they are not
    stored.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    layers: int

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def rows(self, indices: Sequence[int]) -> EncoderState:
        """Keep only the given rows, dropping padding columns that no kept row needs."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.hidden.device)
        mask = self.attention_mask.index_select(0, index)
        width = int(mask.sum(dim=1).max()) if len(index) else 0
        hidden = self.hidden.index_select(0, index)[:, :width]
        return EncoderState(hidden=hidden, attention_mask=mask[:, :width], layers=self.layers)


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class Encoder:
    """A sentence encoder whose depth and width are chosen per call.

    Build one with :meth:`from_pretrained`. Encoding is thread-safe: the
    tokenizer is used through its Rust backend, which keeps no per-call state,
    and torch modules are only read.
    """

    def __init__(
        self,
        backbone: Backbone,
        tokenizer,
        sentence_config: SentenceModelConfig,
        *,
        name: str,
        fingerprint: str,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UnsupportedModelError(f"model {name!r} has no fast tokenizer (tokenizer.json); aegis-router needs one")

        self.backbone = backbone
        self.sentence_config = sentence_config
        self.name = name
        self.fingerprint = fingerprint
        self.max_length = _max_length(tokenizer, backbone.config, sentence_config)

        # A private copy of the Rust tokenizer with truncation and padding off:
        # the encoder truncates and pads itself, which lets it count truncated texts
        # and pad each length-sorted batch only to its own longest text.
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        self.device = next(backbone.model.parameters()).device
        self.dtype = next(backbone.model.parameters()).dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        exit_norm: ExitNorm | None = None,
        runtime: Runtime = "lean",
        quantize: Quantization | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> Encoder:
        """Load a sentence-transformers model (BERT family, MPNet or ModernBERT) by local path or hub id.

        ``device`` defaults to the CPU and ``dtype`` to float32, whatever dtype
        the checkpoint was saved in: bfloat16 is far slower than float32 on
        most CPUs. ``exit_norm`` sets how a pre-LayerNorm model's early exits
        are read. ``runtime`` chooses how layers run. ``"lean"`` (the default)
        drives the weights directly with fewer torch calls, and
        ``"transformers"`` calls transformers' own layer modules. Both give the
        same vectors within float rounding. MPNet always runs on
        ``"transformers"``. ``quantize="int8"`` runs the linear layers in int8
        on the CPU, for the fast and the resumed pass alike. See
        :func:`aegis_router.backbones.backbone_for`.
        """
        from transformers import AutoModel, AutoTokenizer

        torch_dtype = _parse_dtype(dtype)
        folder = resolve_model_folder(name_or_path, revision=revision)
        sentence_config = read_sentence_config(folder)

        with _quiet_transformers_progress():
            model = AutoModel.from_pretrained(
                sentence_config.backbone_folder, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        model.eval()
        model.to(torch.device(device) if device is not None else torch.device("cpu"))
        tokenizer = AutoTokenizer.from_pretrained(sentence_config.backbone_folder, trust_remote_code=trust_remote_code)

        backbone = backbone_for(model, exit_norm, runtime=runtime, quantize=quantize)
        name = str(name_or_path)
        logger.info(
            "loaded %s (%s, %d layers, %d dims, %s runtime, %s weights)",
            name,
            model.config.model_type,
            backbone.depth,
            backbone.hidden_size,
            backbone.runtime,
            backbone.quantization or str(torch_dtype).removeprefix("torch."),
        )
        return cls(backbone, tokenizer, sentence_config, name=name, fingerprint=fingerprint_folder(folder))

    @property
    def depth(self) -> int:
        """The number of layers of the backbone."""
        return self.backbone.depth

    @property
    def hidden_size(self) -> int:
        """The width of the backbone's vectors."""
        return self.backbone.hidden_size

    @property
    def model_type(self) -> str:
        return str(self.backbone.config.model_type)

    @property
    def runtime(self) -> Runtime:
        """How the layers run: ``"lean"`` or ``"transformers"``."""
        return self.backbone.runtime

    @property
    def quantization(self) -> Quantization | None:
        """``"int8"`` when the linear layers run in int8, else None."""
        return self.backbone.quantization

    @property
    def full_tier(self) -> Tier:
        """All layers, full width."""
        return Tier(self.depth, self.hidden_size)

    def check_tier(self, tier: Tier) -> Tier:
        """Return ``tier`` if this model can run it, else raise :class:`TierError` naming the limit."""
        if not isinstance(tier, Tier):
            raise TypeError(f"expected a Tier, got {tier!r} ({type(tier).__name__}); build one with Tier(layers, dim)")
        if tier.layers > self.depth:
            raise TierError(
                f"{tier} asks for {tier.layers} layers, but {self.name} has {self.depth}; use 1 to {self.depth} layers"
            )
        if tier.dim > self.hidden_size:
            raise TierError(
                f"{tier} asks for {tier.dim} dimensions, but {self.name} produces {self.hidden_size}; "
                f"use 1 to {self.hidden_size} dimensions"
            )
        return tier

    def encode(
        self,
        texts: str | Sequence[str],
        tier: Tier | None = None,
        *,
        batch_size: int = 32,
        prompt_name: str | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed texts at ``tier`` (the full tier when None) as L2-normalised float32 rows.

        Texts are sorted by token length and each batch is padded only to its
        own longest text; rows come back in input order. A single string gives
        a 1-D vector. By default a progress bar shows on a terminal when there
        are at least 8 batches.
        """
        single = isinstance(texts, str)
        tier = tier or self.full_tier
        vectors = self.encode_tiers(
            [texts] if single else texts,
            [tier],
            batch_size=batch_size,
            prompt_name=prompt_name,
            show_progress=show_progress,
        )[tier]
        return vectors[0] if single else vectors

    def encode_tiers(
        self,
        texts: Sequence[str],
        tiers: Sequence[Tier],
        *,
        batch_size: int = 32,
        prompt_name: str | None = None,
        show_progress: bool | None = None,
    ) -> dict[Tier, np.ndarray]:
        """Embed texts at several tiers in one pass: each batch runs to the deepest tier once.

        The vectors of a shallower tier are taken from the state on the way
        down, so building an index for a fast and a full tier costs one full
        pass, not two.
        """
        tiers = list(dict.fromkeys(self.check_tier(tier) for tier in tiers))
        if not tiers:
            raise ValueError("tiers is empty: pass at least one Tier")

        output: dict[Tier, np.ndarray] = {}
        walk = self.walk(texts, [tier.layers for tier in tiers], batch_size=batch_size, prompt_name=prompt_name, show_progress=show_progress)
        for rows, state in walk:
            for tier in tiers:
                if tier.layers == state.layers:
                    output.setdefault(tier, np.empty((len(texts), tier.dim), dtype=np.float32))[rows] = self.vectors(state, tier.dim)
        return output

    def walk(
        self,
        texts: Sequence[str],
        depths: Sequence[int],
        *,
        batch_size: int = 32,
        prompt_name: str | None = None,
        show_progress: bool | None = None,
    ) -> Iterator[tuple[np.ndarray, EncoderState]]:
        """Yield ``(rows, state)`` for each length-sorted batch at each depth, shallowest first.

        ``rows`` are the positions of the batch's texts in ``texts``. Each
        batch runs its layers once, stopping at every requested depth on the
        way down.
        """
        items = self._check_texts(texts)
        depths = sorted(set(depths))
        if not depths or depths[0] < 1 or depths[-1] > self.depth:
            raise TierError(f"depths must be between 1 and {self.depth}, got {depths}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")

        token_ids = self._tokenize(items, prompt_name)
        order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if show_progress is None:
            show_progress = len(batches) >= PROGRESS_MIN_BATCHES and sys.stderr.isatty()

        for rows in tqdm(batches, desc="encoding", unit="batch", disable=not show_progress):
            state = self._run(self._pad([token_ids[i] for i in rows]), depths[0])
            for depth in depths:
                state = self.resume_state(state, depth)
                yield rows, state

    def encode_with_state(
        self, texts: Sequence[str], tier: Tier, *, prompt_name: str | None = None
    ) -> tuple[np.ndarray, EncoderState]:
        """Embed texts as one padded batch and also return the state needed to resume them.

        Meant for routing-sized batches: the whole batch's hidden state is kept
        in memory until the caller drops it.
        """
        items = self._check_texts(texts)
        tier = self.check_tier(tier)
        state = self._run(self._pad(self._tokenize(items, prompt_name)), tier.layers)
        return self.vectors(state, tier.dim), state

    def resume(self, state: EncoderState, tier: Tier) -> np.ndarray:
        """Continue ``state`` to ``tier.layers`` layers and embed at ``tier``; equals a fresh encode."""
        return self.vectors(self.resume_state(state, tier.layers), self.check_tier(tier).dim)

    def resume_state(self, state: EncoderState, layers: int) -> EncoderState:
        """Run the layers between ``state.layers`` and ``layers`` and return the deeper state."""
        if not state.layers <= layers <= self.depth:
            raise TierError(
                f"cannot resume a state of {state.layers} layers to {layers} layers: "
                f"the target must be between {state.layers} and {self.depth}"
            )
        if layers == state.layers or len(state) == 0:
            return EncoderState(state.hidden, state.attention_mask, layers)

        with torch.inference_mode():
            hidden = self.backbone.run_layers(state.hidden, state.attention_mask, state.layers, layers)
        return EncoderState(hidden=hidden, attention_mask=state.attention_mask, layers=layers)

    def pool(self, state: EncoderState) -> torch.Tensor:
        """Pool a state into one float32 vector per row, before truncation and normalisation."""
        with torch.inference_mode():
            tokens = self.backbone.exit_output(state.hidden, state.layers).float()
            mask = state.attention_mask.unsqueeze(-1).to(tokens.dtype)
            mode = self.sentence_config.pooling
            if mode == "cls":
                return tokens[:, 0]
            if mode == "max":
                return tokens.masked_fill(mask == 0, float("-inf")).amax(dim=1)
            return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def vectors(self, state: EncoderState, dim: int) -> np.ndarray:
        """Pool a state, cut it to ``dim`` dimensions and L2-normalise: the tier's vectors."""
        if len(state) == 0:
            return np.empty((0, dim), dtype=np.float32)
        pooled = self.pool(state)[:, :dim]
        return F.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def _run(self, batch: TokenBatch, layers: int) -> EncoderState:
        with torch.inference_mode():
            hidden = self.backbone.embed(batch.input_ids)
            hidden = self.backbone.run_layers(hidden, batch.attention_mask, 0, layers)
        return EncoderState(hidden=hidden, attention_mask=batch.attention_mask, layers=layers)

    def _tokenize(self, texts: list[str], prompt_name: str | None) -> list[list[int]]:
        prefix = self._prompt(prompt_name)
        if prefix:
            texts = [prefix + text for text in texts]

        encodings = self._tokenizer.encode_batch(texts) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        token_ids = []
        truncated = 0
        for encoding in encodings:
            ids = encoding.ids
            if len(ids) > self.max_length:
                truncated += 1
                ids = _truncate(ids, encoding.special_tokens_mask, self.max_length)
            token_ids.append(ids)

        if truncated:
            logger.warning(
                "%d of %d texts are longer than the model's limit of %d tokens and were truncated",
                truncated,
                len(texts),
                self.max_length,
            )
        return token_ids

    def _pad(self, token_ids: list[list[int]]) -> TokenBatch:
        width = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return TokenBatch(input_ids.to(self.device), attention_mask.to(self.device))

    def _prompt(self, prompt_name: str | None) -> str:
        prompts = self.sentence_config.prompts
        name = prompt_name if prompt_name is not None else self.sentence_config.default_prompt_name
        if name is None:
            return ""
        if name not in prompts:
            available = ", ".join(sorted(prompts)) or "none"
            raise ValueError(f"prompt {name!r} is not defined for {self.name}; defined prompts: {available}")
        return prompts[name]

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
        items = list(texts)
        if not items:
            raise ValueError("texts is empty: pass at least one text")

        wrong_types = [f"{i} ({type(text).__name__})" for i, text in enumerate(items) if not isinstance(text, str)]
        if wrong_types:
            raise TypeError(f"texts must all be strings; these positions are not: {', '.join(wrong_types[:10])}")
        blank = [str(i) for i, text in enumerate(items) if not text.strip()]
        if len(blank) == 1:
            raise ValueError(f"the text at position {blank[0]} is empty or whitespace only; give it some words or drop it")
        if blank:
            raise ValueError(
                f"texts at positions {', '.join(blank[:10])} are empty or whitespace only; give them some words or drop them"
            )
        return items


@contextmanager
def _quiet_transformers_progress() -> Iterator[None]:
    # transformers shows a "Loading weights" bar on every load whatever the log
    # level; a library that loads a model on the hot path should not.
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _truncate(ids: list[int], special_mask: list[int], limit: int) -> list[int]:
    # Keep the trailing special tokens ([SEP], </s>) as the tokenizer's own
    # truncation would, and cut content tokens before them.
    tail = 0
    while tail < len(ids) and special_mask[len(ids) - 1 - tail]:
        tail += 1
    tail = min(tail, limit)
    return ids[: limit - tail] + ids[len(ids) - tail :]


def _max_length(tokenizer, config, sentence_config: SentenceModelConfig) -> int:
    # Learned position tables bound the length. RoBERTa-style models offset
    # positions by the padding index, which costs them padding_idx + 1 slots.
    limit = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        limit -= int(getattr(config, "pad_token_id", 1)) + 1
    candidates = [limit]
    if sentence_config.max_seq_length:
        candidates.append(int(sentence_config.max_seq_length))
    elif 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        candidates.append(int(tokenizer.model_max_length))
    return min(candidates)


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)} or a torch.dtype")
