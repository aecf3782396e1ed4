"""Layer-by-layer access to the transformer backbones aegis-router supports.

sentence-transformers and ``model(...)`` always run every layer. To stop after
``k`` layers, and later continue from there, the encoder drives the layer loop
itself. Each backbone class below knows how to embed tokens, how to rebuild
the per-call context a layer needs (attention masks, rotary tables, position
bias) from the 2-D attention mask alone, and how the model's output is defined
at a given depth.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Literal

import torch
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_bidirectional_sliding_window_mask,
)

from .errors import UnsupportedModelError

logger = logging.getLogger(__name__)

ExitNorm = Literal["raw", "final_norm"]
EXIT_NORMS: tuple[str, ...] = ("raw", "final_norm")

# "lean" runs the layers directly on the loaded weights (see aegis_router.lean);
# "transformers" calls transformers' own layer modules.
Runtime = Literal["lean", "transformers"]
RUNTIMES: tuple[str, ...] = ("lean", "transformers")
Quantization = Literal["int8"]
QUANTIZATIONS: tuple[str, ...] = ("int8",)

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert")
SUPPORTED_MODEL_TYPES = ("modernbert", *BERT_FAMILY, "mpnet")


class Backbone(ABC):
    """A transformers encoder whose layers can be run in slices."""

    runtime: Runtime = "transformers"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = model.config
        # The quantization of the linear layers the forward pass uses; None for the loaded dtype.
        self.quantization: Quantization | None = None

    @property
    def depth(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the embedding output (the state before layer 1)."""

    @abstractmethod
    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run layers ``start+1 .. stop`` (1-based) on ``hidden``; ``attention_mask`` is 2-D, 1 for real tokens."""

    def exit_output(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        """Turn the state after ``layers`` layers into the token states that get pooled."""
        return hidden


class ModernBertBackbone(Backbone):
    """ModernBERT (aegis-embed, mmBERT): pre-LayerNorm, alternating global and sliding-window attention.

    The model applies ``final_norm`` after its last layer only. Training of
    aegis-embed pooled raw states for earlier exits, so ``exit_norm="raw"`` is
    the default; ``"final_norm"`` applies the final norm at every depth, as the
    model card's own layer-reduction snippet does.
    """

    def __init__(self, model: torch.nn.Module, exit_norm: ExitNorm = "raw") -> None:
        super().__init__(model)
        self.exit_norm = exit_norm

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        layers = self.model.layers[start:stop]
        needed_types = {layer.attention_type for layer in layers}
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask_arguments = {"config": self.config, "inputs_embeds": hidden, "attention_mask": attention_mask}

        masks = {}
        if "full_attention" in needed_types:
            masks["full_attention"] = create_bidirectional_mask(**mask_arguments)
        if "sliding_attention" in needed_types:
            masks["sliding_attention"] = create_bidirectional_sliding_window_mask(**mask_arguments)
        rotary = {kind: self.model.rotary_emb(hidden, position_ids, kind) for kind in needed_types}

        for layer in layers:
            kind = layer.attention_type
            hidden = layer(hidden, attention_mask=masks[kind], position_embeddings=rotary[kind])
        return hidden

    def exit_output(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        if layers == self.depth or self.exit_norm == "final_norm":
            return self.model.final_norm(hidden)
        return hidden


class BertFamilyBackbone(Backbone):
    """BERT, MiniLM, RoBERTa and XLM-R: post-LayerNorm, so every layer's output is already normalised."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        token_type_ids = torch.zeros_like(input_ids)
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.model.encoder.layer[start:stop]:
            hidden = _first(layer(hidden, mask))
        return hidden


class MPNetBackbone(Backbone):
    """MPNet: BERT-like post-LayerNorm layers plus a relative position bias shared by all layers."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        position_bias = self.model.encoder.compute_position_bias(hidden)
        for layer in self.model.encoder.layer[start:stop]:
            hidden = _first(layer(hidden, mask, position_bias))
        return hidden


def backbone_for(
    model: torch.nn.Module,
    exit_norm: ExitNorm | None = None,
    *,
    runtime: Runtime = "lean",
    quantize: Quantization | None = None,
) -> Backbone:
    """Wrap a loaded transformers model in the backbone class for its ``model_type`` and ``runtime``.

    ``exit_norm`` only matters for pre-LayerNorm models (ModernBERT). When it is
    None, a ``representation_contract`` entry in the model's config.json
    decides, and otherwise raw exits are used. An explicit value wins over the
    config, because the caller asked for it.

    ``runtime="lean"`` covers the BERT family and ModernBERT. Other models
    (MPNet) and configurations the lean path does not handle fall back to the
    transformers runtime, with an INFO log. ``quantize="int8"`` replaces the
    linear layers by int8 ones (CPU, float32 models only). Both change
    ``model`` in place: the lean runtime re-lays its linear weights, and int8
    replaces its ``nn.Linear`` modules.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not supported; use one of {', '.join(map(repr, RUNTIMES))}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize {quantize!r} is not supported; use one of {', '.join(map(repr, QUANTIZATIONS))} or None"
        )

    model_type = getattr(model.config, "model_type", None)
    if model_type == "modernbert":
        exit_norm = exit_norm or contract_exit_norm(model.config) or "raw"
    elif exit_norm == "final_norm":
        raise UnsupportedModelError(
            f"exit_norm='final_norm' only applies to pre-LayerNorm models such as ModernBERT; "
            f"{model_type!r} layers already end in a LayerNorm, so leave exit_norm unset"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types are {', '.join(SUPPORTED_MODEL_TYPES)}"
        )

    if runtime == "lean":
        from .lean import lean_backbone_for, lean_unsupported_reason

        reason = lean_unsupported_reason(model)
        if reason is None:
            return lean_backbone_for(model, exit_norm, quantize)
        logger.info("using the transformers runtime for this %s model: %s", model_type, reason)

    if quantize is not None:
        from .lean import quantize_linear_modules

        quantize_linear_modules(model)
    backbone = _transformers_backbone(model, model_type, exit_norm)
    backbone.quantization = quantize
    return backbone


def _transformers_backbone(model: torch.nn.Module, model_type: str, exit_norm: ExitNorm | None) -> Backbone:
    if model_type == "modernbert":
        return ModernBertBackbone(model, exit_norm)
    if model_type in BERT_FAMILY:
        return BertFamilyBackbone(model)
    return MPNetBackbone(model)


def contract_exit_norm(config) -> ExitNorm | None:
    """Read the early-exit convention from a ``representation_contract`` config entry.

    Accepted forms: ``"raw"`` or ``"final_norm"``, or a mapping whose
    ``early_exit`` key contains one of them.
    """
    contract = getattr(config, "representation_contract", None)
    if contract is None:
        return None

    value = contract.get("early_exit") if isinstance(contract, dict) else contract
    if value not in EXIT_NORMS:
        raise UnsupportedModelError(
            f"config.json representation_contract {contract!r} is not understood; expected "
            f"{' or '.join(repr(v) for v in EXIT_NORMS)}, or a mapping with an 'early_exit' key holding one"
        )
    return value


def _first(output):
    # Some layer classes return a tensor, others a tuple whose first item is the state.
    return output[0] if isinstance(output, tuple) else output
