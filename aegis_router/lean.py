"""A lean forward pass for BERT-family and ModernBERT backbones, and int8 linear layers for CPUs.

For a short task each layer is a few small matrix products, and driving
transformers' layer modules adds per-call work around them: module calls,
mask building, separate query, key and value projections and rotary tables
rebuilt on every call. The backbones here read the loaded weights once and run
each layer as a handful of torch calls:

- one fused query-key-value projection (BERT's three weight matrices are
  concatenated once at load; ModernBERT already stores them fused);
- ``torch.nn.functional.scaled_dot_product_attention``, with no mask at all
  when a batch has no padding and, for ModernBERT, a sliding-window mask only
  when the sequence is longer than the window;
- ModernBERT's rotary cos/sin tables computed once by the model's own rotary
  module and sliced per length.

They compute the same function as transformers' layers (the tests compare the
two at every depth), so a state from one runtime resumes in the other with the
same result, within float rounding.

``quantize="int8"`` swaps every linear layer for :class:`Int8Linear`, in both
runtimes. It does not use ``torch.ao.quantization.quantize_dynamic``, for two
reasons. torch 2.13 still ships it but warns that it is deprecated. It also
quantizes each call's activations with one scale for the whole batch, which
would make a text's vector depend on the other texts it is batched with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backbones import (
    BERT_FAMILY,
    BertFamilyBackbone,
    ExitNorm,
    ModernBertBackbone,
    Quantization,
)

logger = logging.getLogger(__name__)

LEAN_MODEL_TYPES = ("modernbert", *BERT_FAMILY)

# Activations that are plain torch functions in transformers' ACT2FN. Any other
# activation is called through the model's own activation module.
_TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# Rotary types whose tables depend on the sequence length, so a table cached
# for one length is wrong for another.
_LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")

_INT8_MAX = 127.0
_MIN_SCALE = 1e-12

# A linear layer as a function of a 2-D ``(rows, in)`` tensor.
Linear = Callable[[torch.Tensor], torch.Tensor]


def lean_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Return why the lean runtime cannot run ``model``, or None when it can."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"the lean runtime supports {', '.join(LEAN_MODEL_TYPES)}, not {model_type!r}"
    if model_type == "modernbert":
        rope_types = getattr(model.rotary_emb, "rope_type", {})
        dynamic = sorted(kind for kind, rope_type in rope_types.items() if rope_type in _LENGTH_DEPENDENT_ROPE_TYPES)
        if dynamic:
            return f"its rotary embedding for {', '.join(dynamic)} depends on the sequence length"
        return None
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "it is configured as a decoder (causal or cross attention)"
    return None


def lean_backbone_for(
    model: torch.nn.Module, exit_norm: ExitNorm, quantize: Quantization | None
) -> LeanBertBackbone | LeanModernBertBackbone:
    """Build the lean backbone for a model that :func:`lean_unsupported_reason` accepts."""
    logger.debug("building the lean runtime for a %s model, quantize=%s", model.config.model_type, quantize)
    if model.config.model_type == "modernbert":
        return LeanModernBertBackbone(model, exit_norm, quantize=quantize)
    return LeanBertBackbone(model, quantize=quantize)


class FloatLinear:
    """A float linear layer computed as ``bias + x @ weight_t`` on 2-D input.

    The weight is stored transposed, as a contiguous ``(in, out)`` matrix. For
    the few rows of a short task, ``addmm`` on that layout ran about 1.3x
    faster than ``F.linear`` on the ``(out, in)`` one in a micro-benchmark
    (12 rows, torch 2.13 with MKL, x86).
    """

    __slots__ = ("bias", "weight_t")

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight_t = weight_t
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)


class Int8Linear:
    """A linear layer with int8 weights (one scale per output channel) and int8 activations (one scale per row).

    Each row (token) of the 2-D input is scaled by its own absolute maximum,
    so a token's output does not depend on the other tokens or texts of the
    batch. The vectors of a text are thus the same, up to float rounding,
    alone, in a batch, padded or resumed. The int8 product is accumulated in
    int32 by ``torch._int_mm``, then scaled back to float and the float bias
    is added.

    NOTE: ``torch._int_mm`` is a private torch function. This class was only
    run with torch 2.13 on x86 CPUs.
    """

    __slots__ = ("bias", "in_features", "out_features", "weight_scale", "weight_t")

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        # A transposed view of the (out, in) int8 matrix, which _int_mm read
        # faster than a contiguous (in, out) copy with torch 2.13 on x86.
        self.weight_t = weight.t()
        self.weight_scale = weight_scale
        self.bias = bias

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        """Quantize a float ``(out, in)`` weight symmetrically, one scale per output channel."""
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=_MIN_SCALE) / _INT8_MAX
        quantized = torch.round(weight / scale.unsqueeze(1)).to(torch.int8)
        return cls(quantized, scale, bias.detach().float() if bias is not None else None)

    @classmethod
    def concatenate(cls, layers: list[Int8Linear]) -> Int8Linear:
        """Stack layers along the output dimension; equal to quantizing the stacked float weights."""
        weight = torch.cat([layer.weight_t.t() for layer in layers], dim=0)
        scale = torch.cat([layer.weight_scale for layer in layers], dim=0)
        biases = [layer.bias for layer in layers]
        bias = None if any(b is None for b in biases) else torch.cat(biases, dim=0)
        return cls(weight, scale, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        row_scale = torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True)
        row_scale = row_scale.clamp_(min=_MIN_SCALE).div_(_INT8_MAX)
        quantized = torch.round(x / row_scale).to(torch.int8)

        output = torch._int_mm(quantized, self.weight_t).to(x.dtype).mul_(row_scale)
        if self.bias is None:
            return output.mul_(self.weight_scale)
        return torch.addcmul(self.bias, output, self.weight_scale)


class Int8LinearModule(torch.nn.Module):
    """:class:`Int8Linear` as a module, to stand in for ``nn.Linear`` inside a transformers model."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.int8 = Int8Linear.quantize(linear.weight, linear.bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int8(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"


def quantize_linear_modules(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` in place by :class:`Int8LinearModule`; return how many were replaced.

    The float weights are released, so the model then holds int8 weights only.
    """
    check_int8_supported(model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8LinearModule(child))
                replaced += 1
    return replaced


def check_int8_supported(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a float32 model on the CPU, where int8 layers run."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        raise ValueError(
            f"quantize='int8' runs on the CPU only, but the model is on {parameter.device}; "
            "load it with device='cpu' or leave quantize unset"
        )
    if parameter.dtype != torch.float32:
        raise ValueError(
            f"quantize='int8' needs a float32 model, but it was loaded as {parameter.dtype}; "
            "load it with dtype='float32' or leave quantize unset"
        )


def _linear(modules: list[torch.nn.Module]) -> Linear:
    """Build one linear layer computing the given modules' outputs side by side.

    Float weights are re-laid as one contiguous ``(in, out)`` matrix, and each
    module's own weight becomes a view into it, so the model keeps working
    and memory is not doubled. Int8 modules are stacked as they are.

    NOTE: views that share one matrix cannot be written by safetensors, so a
    model prepared this way cannot be saved with ``save_pretrained``.
    """
    if all(isinstance(module, Int8LinearModule) for module in modules):
        return modules[0].int8 if len(modules) == 1 else Int8Linear.concatenate([module.int8 for module in modules])

    weight_t = torch.cat([module.weight.detach() for module in modules], dim=0).t().contiguous()
    biases = [module.bias for module in modules]
    bias = None if any(b is None for b in biases) else torch.cat([b.detach() for b in biases], dim=0)

    start = 0
    for module in modules:
        stop = start + module.out_features
        module.weight = torch.nn.Parameter(weight_t[:, start:stop].t(), requires_grad=False)
        start = stop
    return FloatLinear(weight_t, bias)


def _activation(name, module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return _TORCH_ACTIVATIONS.get(name, module) if isinstance(name, str) else module


@dataclass(frozen=True)
class _Norm:
    """A LayerNorm's parameters, applied with ``F.layer_norm`` to skip the module call."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float

    @classmethod
    def of(cls, module: torch.nn.LayerNorm) -> _Norm:
        weight = module.weight.detach() if module.weight is not None else None
        bias = module.bias.detach() if module.bias is not None else None
        return cls(weight, bias, float(module.eps))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


def _key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Return a ``(batch, 1, 1, tokens)`` boolean mask of the keys to attend to, or None when no row is padded."""
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


@dataclass(frozen=True)
class _BertLayer:
    qkv: Linear
    attention_out: Linear
    attention_norm: _Norm
    up: Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    down: Linear
    output_norm: _Norm


def _prepare_weights(model: torch.nn.Module, quantize: Quantization | None) -> None:
    if quantize == "int8":
        quantize_linear_modules(model)


class LeanBertBackbone(BertFamilyBackbone):
    """BERT, MiniLM, RoBERTa and XLM-R layers run directly on the loaded weights.

    Building one re-lays the model's linear weights (see :func:`_linear`), or,
    with ``quantize="int8"``, replaces its linear modules by int8 ones. The
    model stays usable and computes what the backbone computes. Only plain BERT
    gets a lean embedding step: RoBERTa-style models number positions from
    their padding index, so their embeddings run through the model's module.
    """

    runtime = "lean"

    def __init__(self, model: torch.nn.Module, *, quantize: Quantization | None = None) -> None:
        super().__init__(model)
        _prepare_weights(model, quantize)
        self.quantization = quantize
        self.heads = int(self.config.num_attention_heads)
        self.head_dim = self.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self._layers = [self._lean_layer(layer) for layer in model.encoder.layer]

        self._lean_embed = self.config.model_type == "bert"
        if self._lean_embed:
            embeddings = model.embeddings
            self._word_embeddings = embeddings.word_embeddings.weight.detach()
            # Token type ids are always 0 here, so the type row is added to every position row once.
            type_row = embeddings.token_type_embeddings.weight.detach()[0]
            self._position_and_type = embeddings.position_embeddings.weight.detach() + type_row
            self._embedding_norm = _Norm.of(embeddings.LayerNorm)

    def _lean_layer(self, layer: torch.nn.Module) -> _BertLayer:
        attention = layer.attention.self
        return _BertLayer(
            qkv=_linear([attention.query, attention.key, attention.value]),
            attention_out=_linear([layer.attention.output.dense]),
            attention_norm=_Norm.of(layer.attention.output.LayerNorm),
            up=_linear([layer.intermediate.dense]),
            activation=_activation(getattr(self.config, "hidden_act", None), layer.intermediate.intermediate_act_fn),
            down=_linear([layer.output.dense]),
            output_norm=_Norm.of(layer.output.LayerNorm),
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self._lean_embed:
            return super().embed(input_ids)
        tokens = F.embedding(input_ids, self._word_embeddings)
        tokens += self._position_and_type[: input_ids.shape[1]]
        return self._embedding_norm(tokens)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        batch, tokens, width = hidden.shape
        mask = _key_padding_mask(attention_mask)
        # Layers work on (batch * tokens, width) rows, the shape the linear layers take.
        rows = hidden.reshape(batch * tokens, width)
        for layer in self._layers[start:stop]:
            rows = self._run_layer(layer, rows, mask, batch, tokens)
        return rows.view(batch, tokens, width)

    def _run_layer(
        self, layer: _BertLayer, rows: torch.Tensor, mask: torch.Tensor | None, batch: int, tokens: int
    ) -> torch.Tensor:
        # (batch, tokens, 3, heads, head_dim) -> three (batch, heads, tokens, head_dim) views.
        qkv = layer.qkv(rows).view(batch, tokens, 3, self.heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale)
        context = context.transpose(1, 2).reshape(rows.shape)

        # Post-LayerNorm residual blocks. The sums are written into fresh
        # projection outputs, never into ``rows``, which may be a stored state.
        attended = layer.attention_out(context)
        attended += rows
        attended = layer.attention_norm(attended)

        output = layer.down(layer.activation(layer.up(attended)))
        output += attended
        return layer.output_norm(output)


@dataclass(frozen=True)
class _ModernBertLayer:
    attention_norm: _Norm | None
    qkv: Linear
    attention_out: Linear
    mlp_norm: _Norm
    up: Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    down: Linear
    attention_type: str


class LeanModernBertBackbone(ModernBertBackbone):
    """ModernBERT layers run directly on the loaded weights, with cached rotary tables.

    Building one re-lays or quantizes the model's linear weights, as
    :class:`LeanBertBackbone` does. The rotary tables of each attention type
    come from the model's own rotary module, computed once for the longest
    length seen so far and sliced for shorter inputs. That is exact because a
    position's cos and sin do not depend on the length for the rotary types
    this class accepts (see :func:`lean_unsupported_reason`).
    """

    runtime = "lean"

    def __init__(
        self, model: torch.nn.Module, exit_norm: ExitNorm = "raw", *, quantize: Quantization | None = None
    ) -> None:
        super().__init__(model, exit_norm)
        _prepare_weights(model, quantize)
        self.quantization = quantize
        self.heads = int(self.config.num_attention_heads)
        self.head_dim = self.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        # Tokens attend to keys at most this many positions away on either side in sliding-window layers.
        self.window = int(self.config.sliding_window)
        self._layers = [self._lean_layer(layer) for layer in model.layers]

        self._token_embeddings = model.embeddings.tok_embeddings.weight.detach()
        self._embedding_norm = _Norm.of(model.embeddings.norm)
        self._rotary: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _lean_layer(self, layer: torch.nn.Module) -> _ModernBertLayer:
        attention_norm = layer.attn_norm
        return _ModernBertLayer(
            attention_norm=_Norm.of(attention_norm) if isinstance(attention_norm, torch.nn.LayerNorm) else None,
            qkv=_linear([layer.attn.Wqkv]),
            attention_out=_linear([layer.attn.Wo]),
            mlp_norm=_Norm.of(layer.mlp_norm),
            up=_linear([layer.mlp.Wi]),
            activation=_activation(getattr(self.config, "hidden_activation", None), layer.mlp.act),
            down=_linear([layer.mlp.Wo]),
            attention_type=layer.attention_type,
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._embedding_norm(F.embedding(input_ids, self._token_embeddings))

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        layers = self._layers[start:stop]
        if not layers:
            return hidden

        batch, tokens, width = hidden.shape
        types = {layer.attention_type for layer in layers}
        rotary = {kind: self._rotary_table(kind, tokens, hidden) for kind in types}
        masks = self._masks(attention_mask, types)
        rows = hidden.reshape(batch * tokens, width)
        for layer in layers:
            kind = layer.attention_type
            rows = self._run_layer(layer, rows, masks[kind], rotary[kind], batch, tokens)
        return rows.view(batch, tokens, width)

    def _masks(self, attention_mask: torch.Tensor, types: set[str]) -> dict[str, torch.Tensor | None]:
        key_mask = _key_padding_mask(attention_mask)
        masks = {"full_attention": key_mask}
        if "sliding_attention" not in types:
            return masks

        tokens = attention_mask.shape[1]
        if tokens - 1 <= self.window:
            # Every pair of positions is within the window, so sliding layers attend like global ones.
            masks["sliding_attention"] = key_mask
            return masks

        positions = torch.arange(tokens, device=attention_mask.device)
        band = (positions.unsqueeze(0) - positions.unsqueeze(1)).abs_() <= self.window
        if key_mask is None:
            masks["sliding_attention"] = band
        else:
            # A padding query far past the last real token would see no key at
            # all. torch 2.13's CPU kernel returns zeros for such a row, but
            # other SDPA kernels return NaN, so padding queries keep their
            # whole band. Their output is never pooled.
            padding_query = ~attention_mask.bool()[:, None, :, None]
            masks["sliding_attention"] = band & (key_mask | padding_query)
        return masks

    def _rotary_table(self, kind: str, tokens: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._rotary.get(kind)
        if cached is None or cached[0].shape[0] < tokens or cached[0].dtype != like.dtype:
            cached = self._build_rotary_table(kind, tokens, like)
            self._rotary[kind] = cached
        cos, signed_sin = cached
        return cos[:tokens], signed_sin[:tokens]

    def _build_rotary_table(self, kind: str, tokens: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Round up to a power of two (at least 64), so a run of growing lengths rebuilds the table rarely.
        length = 1 << max(tokens - 1, 63).bit_length()
        position_ids = torch.arange(length, device=like.device).unsqueeze(0)
        with torch.no_grad():
            cos, sin = self.model.rotary_emb(like[:1, :1], position_ids, kind)
        # transformers rotates with cat(-x2, x1) * sin. Rolling x by half a
        # head gives (x2, x1), so the first half of sin carries the minus sign.
        half = self.head_dim // 2
        signed_sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        # Shaped (tokens, 1, 1, head_dim) to broadcast over (batch, tokens, 2, heads, head_dim).
        shape = (length, 1, 1, self.head_dim)
        return cos[0].reshape(shape).contiguous(), signed_sin.reshape(shape).contiguous()

    def _run_layer(
        self,
        layer: _ModernBertLayer,
        rows: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        batch: int,
        tokens: int,
    ) -> torch.Tensor:
        normed = layer.attention_norm(rows) if layer.attention_norm is not None else rows
        qkv = layer.qkv(normed).view(batch, tokens, 3, self.heads, self.head_dim)

        # Rotate queries and keys together: (batch, tokens, 2, heads, head_dim).
        cos, signed_sin = rotary
        query_key = qkv[:, :, :2]
        rotated = query_key * cos
        rotated.addcmul_(query_key.roll(self.head_dim // 2, dims=-1), signed_sin)

        query = rotated[:, :, 0].transpose(1, 2)
        key = rotated[:, :, 1].transpose(1, 2)
        value = qkv[:, :, 2].transpose(1, 2)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale)
        context = context.transpose(1, 2).reshape(rows.shape)

        # Pre-LayerNorm residual blocks. ``rows`` itself is never written to.
        residual = layer.attention_out(context)
        residual += rows
        gate_input, gate = layer.up(layer.mlp_norm(residual)).chunk(2, dim=-1)
        output = layer.down(layer.activation(gate_input).mul_(gate))
        output += residual
        return output
