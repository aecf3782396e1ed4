"""The offline tool index: every tool embedded at each tier the router matches at.

A query at the fast tier is compared with tool vectors from the same depth and
width, because a 2D Matryoshka model is trained to compare vectors of equal
depth and width only. Each tool contributes one *entry* for its description
(:func:`aegis_router.catalogue.tool_text`) and one per example; a tool's score
is the best score among its entries.

On disk an index is a folder:

- ``manifest.json``: model id and fingerprint, tiers, tool ids and text
  hashes, thresholds, and the SHA-256 of the two other files;
- ``vectors.safetensors``: one float32 matrix per tier, rows in entry order;
- ``catalogue.json``: the tools, so routing needs no catalogue file;
- ``head.safetensors``: the exit head, when one was trained (see
  :mod:`aegis_router.heads`), with the fast-tier vectors mapped through it
  stored under the key ``"LAYERSxDIM+head"``.

Writes go to a temporary sibling folder that replaces the old one by rename,
so a crash leaves either the old index or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalogue import Catalogue, tool_hash, tool_text
from .errors import IndexFormatError, IndexMismatchError
from .tiers import ModelProfile, Tier

if TYPE_CHECKING:
    import torch

    from .encoder import Encoder
    from .heads import ExitHead, HeadInfo

logger = logging.getLogger(__name__)

FORMAT_NAME = "aegis-router-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.safetensors"
CATALOGUE = "catalogue.json"
HEAD = "head.safetensors"

# Prompt names, as sentence-transformers models define them, for the two sides of a match.
QUERY_PROMPT = "query"
DOCUMENT_PROMPT = "document"


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds stored with an index.

    ``margin``: escalate when the fast tier's best tool leads the second by
    less than this (cosine points). ``min_score``: answer "no tool fits" when
    the best full-tier score is below it (None: always answer a tool).
    ``fast_min_score``: escalate when the fast tier's best score is below it,
    so that the full tier judges whether any tool fits (None: off).
    ``source`` tells where the values came from; ``calibration`` holds the
    data summary when they were fitted.
    """

    margin: float
    min_score: float | None = None
    fast_min_score: float | None = None
    source: str = "profile"
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "min_score": self.min_score,
            "fast_min_score": self.fast_min_score,
            "source": self.source,
            "calibration": self.calibration,
        }

    @classmethod
    def from_profile(cls, profile: ModelProfile) -> Thresholds:
        """Take a model profile's default thresholds, marked as coming from that profile."""
        return cls(margin=profile.margin, min_score=profile.min_score, source=f"profile {profile.name}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        return cls(
            margin=float(data["margin"]),
            min_score=data.get("min_score"),
            fast_min_score=data.get("fast_min_score"),
            source=str(data.get("source", "profile")),
            calibration=data.get("calibration"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model that built an index; an index is valid only with the same weights."""

    name: str
    fingerprint: str
    model_type: str
    depth: int
    hidden_size: int

    @classmethod
    def of(cls, encoder: Encoder) -> ModelInfo:
        return cls(encoder.name, encoder.fingerprint, encoder.model_type, encoder.depth, encoder.hidden_size)


@dataclass(frozen=True)
class Index:
    """Tool vectors at a fast and a full tier, with the catalogue and thresholds they belong to.

    ``entry_starts[i]`` is the first row of tool ``i``'s entries: its
    description row, then one row per example. ``vectors`` maps a tier's key
    (``"6x64"``) to a ``(entries, dim)`` float32 matrix.
    """

    catalogue: Catalogue
    model: ModelInfo
    fast_tier: Tier
    full_tier: Tier
    thresholds: Thresholds
    entry_starts: np.ndarray
    vectors: dict[str, np.ndarray]
    tool_hashes: tuple[str, ...]
    profile: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    head: ExitHead | None = None
    head_info: HeadInfo | None = None

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return (self.fast_tier, self.full_tier)

    @property
    def head_key(self) -> str:
        """The key of the fast-tier tool vectors mapped through the exit head."""
        return f"{self.fast_tier.key}+head"

    def fast_matrix(self, use_head: bool = True) -> np.ndarray:
        """Return the fast-tier entry vectors, mapped through the exit head when there is one and ``use_head`` is set."""
        if use_head and self.head is not None:
            return self.vectors[self.head_key]
        return self.matrix(self.fast_tier)

    def with_head(self, head: ExitHead, info: HeadInfo, encoder: Encoder, batch_size: int = 64) -> Index:
        """Attach an exit head and map every entry's fast-tier state through it."""
        self.check_encoder(encoder)
        info.check(self.model.fingerprint, self.fast_tier, self.full_tier)
        pooled = entry_pooled_states(self.catalogue, encoder, self.fast_tier, batch_size)
        vectors = {key: value for key, value in self.vectors.items() if key != self.head_key}
        vectors[self.head_key] = head.vectors(pooled, self.fast_tier.dim)
        return replace(self, vectors=vectors, head=head, head_info=info)

    def without_head(self) -> Index:
        vectors = {key: value for key, value in self.vectors.items() if key != self.head_key}
        return replace(self, vectors=vectors, head=None, head_info=None)

    @property
    def entry_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def matrix(self, tier: Tier) -> np.ndarray:
        """Return the entry vectors of ``tier``, or raise an error naming the tiers this index has."""
        try:
            return self.vectors[tier.key]
        except KeyError:
            raise IndexFormatError(
                f"this index has no vectors for {tier}; it was built for {', '.join(self.vectors)}. "
                "Rebuild it with that tier."
            ) from None

    def with_thresholds(self, thresholds: Thresholds) -> Index:
        return replace(self, thresholds=thresholds)

    def check_encoder(self, encoder: Encoder) -> None:
        """Raise :class:`IndexMismatchError` unless ``encoder`` has the weights this index was built with."""
        if encoder.fingerprint != self.model.fingerprint:
            raise IndexMismatchError(
                f"the index was built with model {self.model.name!r} (fingerprint {self.model.fingerprint}) "
                f"but the encoder is {encoder.name!r} (fingerprint {encoder.fingerprint}); "
                "load the same model or rebuild the index with `aegis-router index`"
            )

    @classmethod
    def build(
        cls,
        catalogue: Catalogue,
        encoder: Encoder,
        *,
        fast_tier: Tier,
        full_tier: Tier | None = None,
        thresholds: Thresholds,
        profile: str = "",
        previous: Index | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> Index:
        """Embed every tool's entries at the fast and full tiers.

        With ``previous`` (an index of the same model and tiers), tools whose
        text hash is unchanged keep their vectors and only the others are
        embedded.
        """
        full_tier = encoder.check_tier(full_tier or encoder.full_tier)
        fast_tier = encoder.check_tier(fast_tier)
        tiers = [fast_tier, full_tier]
        hashes = tuple(tool_hash(tool) for tool in catalogue)

        reusable: dict[str, tuple[int, int]] = {}
        if previous is not None and _can_reuse(previous, encoder, fast_tier, full_tier):
            for position, digest in enumerate(previous.tool_hashes):
                start = int(previous.entry_starts[position])
                stop = int(previous.entry_starts[position + 1]) if position + 1 < len(previous.entry_starts) else previous.entry_count
                reusable[digest] = (start, stop)

        blocks: dict[str, list[np.ndarray]] = {tier.key: [] for tier in tiers}
        new_descriptions: list[tuple[int, str]] = []
        new_examples: list[tuple[int, str]] = []
        counts = []
        for position, (tool, digest) in enumerate(zip(catalogue, hashes)):
            counts.append(1 + len(tool.examples))
            if digest in reusable:
                continue
            new_descriptions.append((position, tool_text(tool)))
            new_examples.extend((position, example) for example in tool.examples)

        fresh = _embed_entries(encoder, tiers, new_descriptions, new_examples, batch_size, show_progress)
        reused = len(catalogue) - len({position for position, _ in new_descriptions})
        logger.info("index: %d tools embedded, %d reused from the previous index", len(catalogue) - reused, reused)

        for position, digest in enumerate(hashes):
            for tier in tiers:
                if digest in reusable:
                    start, stop = reusable[digest]
                    blocks[tier.key].append(previous.vectors[tier.key][start:stop])
                else:
                    blocks[tier.key].append(fresh[tier][position])

        entry_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        index = cls(
            catalogue=catalogue,
            model=ModelInfo.of(encoder),
            fast_tier=fast_tier,
            full_tier=full_tier,
            thresholds=thresholds,
            entry_starts=entry_starts,
            vectors={key: np.ascontiguousarray(np.concatenate(parts)) for key, parts in blocks.items()},
            tool_hashes=hashes,
            profile=profile,
        )
        if previous is not None and previous.head is not None:
            if reusable:
                logger.info("index: mapping the tools through the existing exit head")
                index = index.with_head(previous.head, previous.head_info, encoder, batch_size)
            else:
                logger.warning("index: the exit head was trained for another model or tiers and is dropped")
        return index

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: a crash leaves the old index or the new one, never a mix."""
        from safetensors.numpy import save_file

        path = Path(path)
        if path.exists() and not (path / MANIFEST).is_file():
            raise IndexFormatError(f"{path} exists and is not an aegis-router index; refusing to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)

        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            # mkdtemp makes a private folder; an index gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)
            save_file({key: np.ascontiguousarray(value) for key, value in self.vectors.items()}, str(staging / VECTORS))
            (staging / CATALOGUE).write_text(self.catalogue.to_json(), encoding="utf-8")
            if self.head is not None:
                from .heads import save_head

                save_head(self.head, staging / HEAD)
            manifest = self._manifest(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
            for name in (*manifest["files"], MANIFEST):
                os.chmod(staging / name, 0o666 & ~umask)
                _fsync(staging / name)
            _swap_in(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("wrote index %s (%d tools, %d entries)", path, len(self.catalogue), self.entry_count)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Index:
        """Read an index folder, checking every file against the manifest."""
        from safetensors.numpy import load_file

        path = Path(path)
        manifest_file = path / MANIFEST
        if not path.exists():
            raise IndexFormatError(f"index folder {path} does not exist; build one with `aegis-router index CATALOGUE -o {path}`")
        if not manifest_file.is_file():
            leftovers = sorted(path.parent.glob(f".{path.name}.*.old"))
            hint = f"; a replaced index was left at {leftovers[0]} by an interrupted save" if leftovers else ""
            raise IndexFormatError(f"{path} is not an aegis-router index (no {MANIFEST}){hint}")

        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"{manifest_file} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{manifest_file} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                f"this aegis-router reads {FORMAT_NAME!r} version {FORMAT_VERSION}. Rebuild the index."
            )

        missing = [key for key in ("model", "fast_tier", "full_tier", "thresholds", "entries", "entry_starts", "tools", "files") if key not in manifest]
        if missing:
            raise IndexFormatError(f"{manifest_file} lacks {', '.join(missing)}; the index is damaged. Rebuild it.")

        for name, expected in manifest["files"].items():
            actual = _sha256(path / name)
            if actual != expected:
                raise IndexFormatError(
                    f"{path / name} does not match the manifest (SHA-256 {actual}, expected {expected}); "
                    "the index was modified or damaged. Rebuild it."
                )

        catalogue = Catalogue.from_json((path / CATALOGUE).read_text(encoding="utf-8"), str(path / CATALOGUE))
        vectors = load_file(str(path / VECTORS))
        index = cls(
            catalogue=catalogue,
            model=ModelInfo(**manifest["model"]),
            fast_tier=Tier(**manifest["fast_tier"]),
            full_tier=Tier(**manifest["full_tier"]),
            thresholds=Thresholds.from_dict(manifest["thresholds"]),
            entry_starts=np.asarray(manifest["entry_starts"], dtype=np.int64),
            vectors=vectors,
            tool_hashes=tuple(tool["text_hash"] for tool in manifest["tools"]),
            profile=manifest.get("profile", ""),
            extra=manifest.get("extra", {}),
        )
        index._validate(manifest, path)

        if manifest.get("head"):
            from .heads import HeadInfo, load_head

            info = HeadInfo.from_dict(manifest["head"])
            info.check(index.model.fingerprint, index.fast_tier, index.full_tier)
            if index.head_key not in vectors:
                raise IndexFormatError(f"{path}: the manifest lists an exit head but {VECTORS} has no {index.head_key!r}")
            index = replace(index, head=load_head(path / HEAD, info, index.model.hidden_size), head_info=info)
        return index

    def _validate(self, manifest: dict[str, Any], path: Path) -> None:
        ids = [tool["id"] for tool in manifest["tools"]]
        if ids != self.catalogue.ids:
            raise IndexFormatError(f"{path}: the manifest's tool ids differ from {CATALOGUE}; rebuild the index")
        for tier in self.tiers:
            matrix = self.vectors.get(tier.key)
            if matrix is None:
                raise IndexFormatError(f"{path}: {VECTORS} has no matrix for {tier}; rebuild the index")
            if matrix.shape != (manifest["entries"], tier.dim):
                raise IndexFormatError(
                    f"{path}: vectors for {tier} have shape {matrix.shape}, the manifest says "
                    f"({manifest['entries']}, {tier.dim}); rebuild the index"
                )

    def _manifest(self, folder: Path) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.__dict__,
            "profile": self.profile,
            "fast_tier": self.fast_tier.to_dict(),
            "full_tier": self.full_tier.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "entries": self.entry_count,
            "entry_starts": self.entry_starts.tolist(),
            "tools": [{"id": tool.id, "text_hash": digest} for tool, digest in zip(self.catalogue, self.tool_hashes)],
            "extra": self.extra,
            "head": self.head_info.to_dict() if self.head_info is not None else None,
            "files": {
                name: _sha256(folder / name) for name in (VECTORS, CATALOGUE, HEAD) if name != HEAD or self.head is not None
            },
        }


def _can_reuse(previous: Index, encoder: Encoder, fast_tier: Tier, full_tier: Tier) -> bool:
    if previous.model.fingerprint != encoder.fingerprint:
        logger.info("index: the model changed, so every tool is embedded again")
        return False
    if previous.fast_tier != fast_tier or previous.full_tier != full_tier:
        logger.info("index: the tiers changed, so every tool is embedded again")
        return False
    return True


def entry_texts(catalogue: Catalogue) -> list[tuple[str, str]]:
    """List every entry of a catalogue in index order, as ``(text, prompt name)`` pairs."""
    entries = []
    for tool in catalogue:
        entries.append((tool_text(tool), DOCUMENT_PROMPT))
        entries.extend((example, QUERY_PROMPT) for example in tool.examples)
    return entries


def entry_pooled_states(catalogue: Catalogue, encoder: Encoder, tier: Tier, batch_size: int = 64) -> torch.Tensor:
    """Compute the pooled state after ``tier.layers`` layers of every entry, in index order, as an exit head's input."""
    import torch

    entries = entry_texts(catalogue)
    pooled = torch.empty((len(entries), encoder.hidden_size), dtype=torch.float32)
    for prompt in (DOCUMENT_PROMPT, QUERY_PROMPT):
        rows = [row for row, (_, entry_prompt) in enumerate(entries) if entry_prompt == prompt]
        if not rows:
            continue
        prompt_name = prompt if prompt in encoder.sentence_config.prompts else None
        texts = [entries[row][0] for row in rows]
        for batch_rows, state in encoder.walk(texts, [tier.layers], batch_size=batch_size, prompt_name=prompt_name):
            pooled[torch.as_tensor([rows[i] for i in batch_rows], dtype=torch.long)] = encoder.pool(state).cpu()
    return pooled


def _embed_entries(encoder, tiers, descriptions, examples, batch_size, show_progress) -> dict[Tier, dict[int, np.ndarray]]:
    """Embed new description and example entries; return, per tier, each tool's block of rows."""
    per_tool: dict[Tier, dict[int, list[np.ndarray]]] = {tier: {} for tier in tiers}
    for entries, prompt in ((descriptions, DOCUMENT_PROMPT), (examples, QUERY_PROMPT)):
        if not entries:
            continue
        prompt_name = prompt if prompt in encoder.sentence_config.prompts else None
        vectors = encoder.encode_tiers(
            [text for _, text in entries], tiers, batch_size=batch_size, prompt_name=prompt_name, show_progress=show_progress
        )
        for tier in tiers:
            for row, (position, _) in enumerate(entries):
                per_tool[tier].setdefault(position, []).append(vectors[tier][row])
    return {tier: {position: np.stack(rows) for position, rows in blocks.items()} for tier, blocks in per_tool.items()}


def _swap_in(staging: Path, path: Path) -> None:
    if not path.exists():
        os.replace(staging, path)
        return
    # Two renames: the old index moves aside, then the new one takes its name.
    # Between them the index path is briefly absent; Index.load names the
    # leftover folder if a crash ever falls in that gap.
    retired = path.parent / f".{path.name}.{os.getpid()}.old"
    os.replace(path, retired)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(retired, path)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _fsync(file: Path) -> None:
    with file.open("rb") as handle:
        os.fsync(handle.fileno())


def _sha256(file: Path) -> str:
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing; the index is incomplete. Rebuild it.")
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
