"""Learned exit heads: a small network that makes the fast tier agree with the full tier.

A shallow pass of an encoder is a weak judge on its own. An exit head maps the
pooled state after the fast tier's layers to the model's own full-tier
embedding of the same text. It is trained without labels (the targets are the
full tier's outputs), so any text in the domain is training data. The head
changes only the fast decision: escalation resumes the raw encoder state, so
full-tier results are the same with or without a head.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import HeadError
from .tiers import Tier

if TYPE_CHECKING:
    from .encoder import Encoder

logger = logging.getLogger(__name__)

DEFAULT_WIDTH = 1024
DEFAULT_EPOCHS = 30
DEFAULT_TEMPERATURE = 0.05
# Weight of the in-batch contrastive term. Measured with the demo model at 1 of
# 6 layers, 3,500 HWU64 training texts, 500 held out, 20 epochs: held-out tool
# agreement with the full tier went from 0.51 (no head) to 0.67 with the cosine
# loss alone and to 0.63 with the contrastive term at weight 1, so it is off by
# default.
DEFAULT_CONTRASTIVE_WEIGHT = 0.0


class ExitHead(nn.Module):
    """A residual correction from the pooled fast-tier state to the full tier's space.

    ``output = skip(x) + mlp(layernorm(x))``, where ``x`` is the pooled state
    scaled to unit length and ``mlp`` is two GELU layers whose last layer starts
    at zero. So an untrained head returns the raw fast-tier vector, and
    training can only start from there. ``skip`` is the identity when the
    model's width equals the full tier's (every profile so far), else a linear
    map. Normalising the input matters for pre-LayerNorm models (ModernBERT),
    whose raw residual stream grows in scale with depth.
    """

    def __init__(self, input_size: int, output_size: int, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        self.input_size, self.output_size, self.width = input_size, output_size, width
        self.norm = nn.LayerNorm(input_size)
        self.hidden = nn.Linear(input_size, width)
        self.output = nn.Linear(width, output_size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.skip = nn.Identity() if input_size == output_size else nn.Linear(input_size, output_size, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(pooled, dim=-1)
        return self.skip(unit) + self.output(F.gelu(self.hidden(self.norm(unit))))

    def vectors(self, pooled: torch.Tensor, dim: int) -> np.ndarray:
        """Map pooled states to normalised vectors cut to ``dim``, like any tier's vectors."""
        with torch.inference_mode():
            mapped = self(pooled.float())[:, :dim]
            return F.normalize(mapped, dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=12)
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class HeadInfo:
    """Model, tiers and training summary of an exit head, as stored in the index manifest."""

    model_fingerprint: str
    fast_tier: Tier
    full_tier: Tier
    width: int
    fingerprint: str
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_fingerprint": self.model_fingerprint,
            "fast_tier": self.fast_tier.to_dict(),
            "full_tier": self.full_tier.to_dict(),
            "width": self.width,
            "fingerprint": self.fingerprint,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadInfo:
        return cls(
            model_fingerprint=data["model_fingerprint"],
            fast_tier=Tier(**data["fast_tier"]),
            full_tier=Tier(**data["full_tier"]),
            width=int(data["width"]),
            fingerprint=data["fingerprint"],
            training=data.get("training", {}),
        )

    def check(self, model_fingerprint: str, fast_tier: Tier, full_tier: Tier) -> None:
        """Raise :class:`HeadError` unless the head was trained for this model and these tiers."""
        if self.model_fingerprint != model_fingerprint:
            raise HeadError(
                f"the exit head was trained for model fingerprint {self.model_fingerprint}, "
                f"not {model_fingerprint}; train a new head with `aegis-router train-head`"
            )
        if (self.fast_tier, self.full_tier) != (fast_tier, full_tier):
            raise HeadError(
                f"the exit head maps {self.fast_tier} to {self.full_tier}, but the index uses "
                f"{fast_tier} and {full_tier}; train a new head for these tiers"
            )


@dataclass(frozen=True)
class TrainedHead:
    head: ExitHead
    info: HeadInfo


def pooled_and_targets(
    encoder: Encoder, texts: Sequence[str], fast_tier: Tier, full_tier: Tier, *, batch_size: int = 64, prompt_name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run each text once to full depth: the pooled state at the fast tier's depth, and the full-tier vector."""
    pooled = torch.empty((len(texts), encoder.hidden_size), dtype=torch.float32)
    targets = torch.empty((len(texts), full_tier.dim), dtype=torch.float32)
    depths = [fast_tier.layers, full_tier.layers]
    for rows, state in encoder.walk(texts, depths, batch_size=batch_size, prompt_name=prompt_name):
        index = torch.as_tensor(rows, dtype=torch.long)
        if state.layers == fast_tier.layers:
            pooled[index] = encoder.pool(state).cpu()
        if state.layers == full_tier.layers:
            targets[index] = torch.from_numpy(encoder.vectors(state, full_tier.dim))
    return pooled, targets


def train_head(
    encoder: Encoder,
    texts: Sequence[str],
    fast_tier: Tier,
    full_tier: Tier,
    *,
    tools_full: np.ndarray | None = None,
    tools_pooled: torch.Tensor | None = None,
    tool_starts: np.ndarray | None = None,
    width: int = DEFAULT_WIDTH,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    temperature: float = DEFAULT_TEMPERATURE,
    contrastive_weight: float = DEFAULT_CONTRASTIVE_WEIGHT,
    held_out: float = 0.1,
    patience: int = 4,
    seed: int = 0,
    show_progress: bool | None = None,
    sources: dict[str, int] | None = None,
) -> TrainedHead:
    """Train an exit head on ``texts`` against the model's own full-tier vectors.

    Loss: cosine distance to the target, plus ``contrastive_weight`` times an
    in-batch contrastive term (each output must be closer to its own target
    than to the batch's other targets, at ``temperature``). A held-out slice measures *agreement*: with
    ``tools_*`` given, the share of held-out texts whose best tool through
    the head equals the full tier's best tool; otherwise the mean cosine to the
    target. Training stops early after ``patience`` epochs without
    improvement and keeps the best epoch. The same seed gives the same head.
    """
    texts = list(dict.fromkeys(text for text in texts if text.strip()))
    if len(texts) < 20:
        raise HeadError(f"an exit head needs at least 20 distinct training texts, got {len(texts)}")
    if not 0 < held_out < 1:
        raise HeadError(f"held_out must be between 0 and 1, got {held_out}")

    torch.manual_seed(seed)
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    texts = [texts[i] for i in order]

    pooled, full_vectors = pooled_and_targets(encoder, texts, fast_tier, full_tier)
    targets = F.normalize(full_vectors[:, : fast_tier.dim], dim=-1)
    split = max(1, int(len(texts) * held_out))
    train_x, train_y, test_x, test_y = pooled[split:], targets[split:], pooled[:split], targets[:split]

    head = ExitHead(encoder.hidden_size, full_tier.dim, width)
    optimiser = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)

    def agreement() -> float:
        head.eval()
        with torch.inference_mode():
            mapped = F.normalize(head(test_x)[:, : fast_tier.dim], dim=-1)
            if tools_full is None or tools_pooled is None:
                return float((mapped * test_y).sum(dim=1).mean())
            tool_vectors = F.normalize(head(tools_pooled)[:, : fast_tier.dim], dim=-1).numpy()
            fast_best = np.maximum.reduceat(mapped.numpy() @ tool_vectors.T, tool_starts, axis=1).argmax(axis=1)
        full_best = np.maximum.reduceat(full_vectors[:split].numpy() @ tools_full.T, tool_starts, axis=1).argmax(axis=1)
        return float((fast_best == full_best).mean())

    # Epoch 0 is the untrained head, which equals the raw fast tier: training
    # keeps a head only if it beats that on the held-out slice.
    best_score, best_epoch = agreement(), 0
    best_state = {name: tensor.detach().clone() for name, tensor in head.state_dict().items()}
    history = [round(best_score, 4)]
    if show_progress is None:
        show_progress = len(train_x) * epochs >= 50_000
    for epoch in tqdm(range(1, epochs + 1), desc="training exit head", unit="epoch", disable=not show_progress):
        head.train()
        permutation = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), batch_size):
            rows = permutation[start : start + batch_size]
            output = F.normalize(head(train_x[rows])[:, : fast_tier.dim], dim=-1)
            target = train_y[rows]
            loss = (1 - (output * target).sum(dim=1)).mean()
            if contrastive_weight:
                logits = output @ target.T / temperature
                loss = loss + contrastive_weight * F.cross_entropy(logits, torch.arange(len(rows)))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        score = agreement()
        history.append(round(score, 4))
        logger.info("exit head epoch %d: held-out agreement %.4f", epoch, score)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {name: tensor.detach().clone() for name, tensor in head.state_dict().items()}
        elif epoch - best_epoch >= patience:
            logger.info("exit head: no improvement for %d epochs, stopping at epoch %d", patience, epoch)
            break

    head.load_state_dict(best_state)
    head.eval()
    info = HeadInfo(
        model_fingerprint=encoder.fingerprint,
        fast_tier=fast_tier,
        full_tier=full_tier,
        width=width,
        fingerprint=head.fingerprint(),
        training={
            "texts": len(texts),
            "held_out": split,
            "sources": sources or {},
            "epochs_run": len(history) - 1,
            "best_epoch": best_epoch,
            "agreement": round(best_score, 6),
            "agreement_without_head": history[0],
            "agreement_measure": "best tool equals the full tier's" if tools_full is not None else "mean cosine to the full tier",
            "seed": seed,
            "contrastive_weight": contrastive_weight,
            "history": history,
        },
    )
    return TrainedHead(head, info)


def save_head(head: ExitHead, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({name: tensor.contiguous() for name, tensor in head.state_dict().items()}, str(path))


def load_head(path: Path, info: HeadInfo, input_size: int) -> ExitHead:
    from safetensors.torch import load_file

    head = ExitHead(input_size, info.full_tier.dim, info.width)
    try:
        head.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise HeadError(f"{path} does not match its manifest entry ({exc}); train the head again") from None
    head.eval()
    if head.fingerprint() != info.fingerprint:
        raise HeadError(f"{path} differs from the head recorded in the manifest; train the head again")
    return head
