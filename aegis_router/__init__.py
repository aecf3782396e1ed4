"""aegis-router: route an agent's task to the right tool with a cheap early-exit pass.

Importing this package is cheap: torch and transformers load only when a model
is loaded or a name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    AegisRouterError,
    CatalogueError,
    HeadError,
    IndexFormatError,
    IndexMismatchError,
    MissingExtraError,
    TierError,
    UnsupportedModelError,
)
from .tiers import ModelProfile, Tier

__version__ = "0.1.0"

_LAZY = {
    "Candidate": "router",
    "Catalogue": "catalogue",
    "Encoder": "encoder",
    "EncoderState": "encoder",
    "ExitHead": "heads",
    "Index": "index",
    "RouteResult": "router",
    "Router": "router",
    "Selection": "router",
    "Thresholds": "index",
    "Tool": "catalogue",
    "build_index": "building",
    "route": "router",
}

__all__ = [
    "AegisRouterError",
    "Candidate",
    "Catalogue",
    "CatalogueError",
    "Encoder",
    "EncoderState",
    "ExitHead",
    "HeadError",
    "Index",
    "IndexFormatError",
    "IndexMismatchError",
    "MissingExtraError",
    "ModelProfile",
    "RouteResult",
    "Router",
    "Selection",
    "Thresholds",
    "Tier",
    "TierError",
    "Tool",
    "UnsupportedModelError",
    "build_index",
    "route",
]

if TYPE_CHECKING:
    from .building import build_index
    from .catalogue import Catalogue, Tool
    from .encoder import Encoder, EncoderState
    from .index import Index, Thresholds
    from .router import Router, RouteResult, Selection, route


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aegis_router' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
