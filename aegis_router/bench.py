"""Latency and throughput of the fast tier, the full tier and the cascade, with baselines, in one run.

Every figure of a report comes from the same process and the same tasks, so
ratios stay meaningful on a shared, noisy machine even when absolute times
drift.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .catalogue import tool_text
from .encoder import Encoder
from .router import Router

logger = logging.getLogger(__name__)

# Comparison modes that run beside fast, full and cascade:
# - "sentence-transformers": SentenceTransformer.encode plus a numpy cosine
#   against the full-tier tool matrix, which is what a user would write by hand.
# - "transformers-runtime": the same router, thresholds and index on an encoder
#   whose layers run through transformers' own modules, timed as the modes
#   "transformers-fast" and "transformers-cascade".
# - "semantic-router": semantic-router's IndexedRouter with its local Hugging
#   Face encoder on the same model folder, one route per tool.
Baseline = Literal["sentence-transformers", "transformers-runtime", "semantic-router"]
BASELINES: tuple[str, ...] = ("sentence-transformers", "transformers-runtime", "semantic-router")

Mode = tuple[Callable[[str], Any], Callable[[list[str]], Any]]


@dataclass(frozen=True)
class Timing:
    """Single-task latency percentiles (ms) and batch throughput (tasks per second) of one mode."""

    name: str
    p50: float
    p95: float
    p99: float
    throughput: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99, "throughput_per_s": self.throughput}


@dataclass
class BenchReport:
    """All timings of one run, plus the settings they were measured with."""

    timings: dict[str, Timing]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def ratio(self, slower: str, faster: str) -> float | None:
        if slower not in self.timings or faster not in self.timings:
            return None
        return self.timings[slower].p50 / self.timings[faster].p50

    def to_dict(self) -> dict[str, Any]:
        ratios = {
            "full_p50_over_cascade_p50": self.ratio("full", "cascade"),
            "full_p50_over_fast_p50": self.ratio("full", "fast"),
            "sentence_transformers_p50_over_cascade_p50": self.ratio("sentence-transformers", "cascade"),
            "transformers_fast_p50_over_fast_p50": self.ratio("transformers-fast", "fast"),
            "transformers_cascade_p50_over_cascade_p50": self.ratio("transformers-cascade", "cascade"),
            "semantic_router_p50_over_cascade_p50": self.ratio("semantic-router", "cascade"),
        }
        return {
            "settings": self.settings,
            "timings": {name: timing.to_dict() for name, timing in self.timings.items()},
            "ratios": ratios,
            "notes": self.notes,
        }

    def format(self) -> str:
        lines = [", ".join(f"{key} {value}" for key, value in self.settings.items())]
        lines.append(f"{'mode':<24}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'batch tasks/s':>15}")
        for timing in self.timings.values():
            throughput = f"{timing.throughput:>15.1f}" if timing.throughput is not None else f"{'-':>15}"
            lines.append(f"{timing.name:<24}{timing.p50:>9.2f}{timing.p95:>9.2f}{timing.p99:>9.2f}{throughput}")
        for name, value in self.to_dict()["ratios"].items():
            if value is not None:
                lines.append(f"{name}: {value:.2f}x")
        lines.extend(self.notes)
        return "\n".join(lines)


def run_bench(
    router: Router,
    tasks: Sequence[str],
    *,
    repeats: int = 1,
    batch_size: int = 64,
    warmup: int = 10,
    threads: int | None = None,
    baseline_model: str | None = None,
    baselines: Collection[Baseline] = ("sentence-transformers",),
    transformers_encoder: Encoder | None = None,
) -> BenchReport:
    """Time single-task routing and batch throughput for every mode on the same tasks.

    Modes: ``fast`` (fast tier only, never escalating), ``full`` (full tier
    only, through this package), ``cascade`` (the router at its thresholds),
    and the comparison modes named in ``baselines`` (see ``BASELINES``). A
    baseline whose package is not installed is skipped with a note.
    ``baseline_model`` is the folder sentence-transformers and semantic-router
    load (the router's model folder when None). ``transformers_encoder`` is the
    encoder of the ``transformers-runtime`` modes; when None, one is loaded
    from the router's model folder with ``runtime="transformers"`` and the
    router encoder's quantization.
    """
    if not tasks:
        raise ValueError("no tasks to benchmark")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}")
    if threads is not None:
        torch.set_num_threads(threads)

    fast_only = Router(router.index, router.encoder, margin=-1.0, fast_min_score=None, min_score=None)
    full_matrix = router.index.matrix(router.full_tier)
    modes: dict[str, Mode] = {
        "fast": (fast_only.route, fast_only.route_batch),
        "full": (lambda task: router.score([task], router.full_tier), lambda batch: router.score(batch, router.full_tier)),
        "cascade": (router.route, router.route_batch),
    }

    notes = []
    if "sentence-transformers" in baselines:
        baseline = _sentence_transformers_baseline(router, full_matrix, baseline_model)
        if baseline is None:
            notes.append("sentence-transformers is not installed: its baseline was skipped (pip install 'aegis-router[bench]')")
        else:
            modes["sentence-transformers"] = baseline
    if "transformers-runtime" in baselines:
        runtime_modes, note = _transformers_runtime_modes(router, transformers_encoder)
        modes.update(runtime_modes)
        notes.extend([note] if note else [])
    if "semantic-router" in baselines:
        baseline = _semantic_router_baseline(router, baseline_model)
        if baseline is None:
            notes.append("semantic-router is not installed: its baseline was skipped (pip install semantic-router)")
        else:
            modes["semantic-router"] = baseline

    single = {name: [] for name in modes}
    for task in tasks[:warmup]:
        for run_one, _ in modes.values():
            run_one(task)
    # Modes take turns on each task, so a slow spell on the machine hits all of them alike.
    for _ in range(repeats):
        for task in tasks:
            for name, (run_one, _) in modes.items():
                started = time.perf_counter()
                run_one(task)
                single[name].append((time.perf_counter() - started) * 1000)

    timings = {}
    for name, (_, run_batch) in modes.items():
        started = time.perf_counter()
        for start in range(0, len(tasks), batch_size):
            run_batch(list(tasks[start : start + batch_size]))
        throughput = len(tasks) / (time.perf_counter() - started)
        p50, p95, p99 = np.percentile(single[name], [50, 95, 99])
        timings[name] = Timing(name, float(p50), float(p95), float(p99), throughput)

    settings = {
        "model": router.encoder.name,
        "fast tier": router.fast_tier.key,
        "full tier": router.full_tier.key,
        "tools": len(router.index.catalogue),
        "tasks": len(tasks),
        "mean task tokens": round(statistics.mean(len(ids) for ids in router.encoder._tokenize(list(tasks), None)), 1),
        "runtime": router.encoder.runtime,
        "weights": router.encoder.quantization or str(router.encoder.dtype).removeprefix("torch."),
        "torch threads": torch.get_num_threads(),
        "cascade escalation rate": round(router.stats.escalation_rate, 3),
    }
    return BenchReport(timings, settings, notes)


def _sentence_transformers_baseline(router: Router, full_matrix: np.ndarray, model_folder: str | None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None

    folder = model_folder or str(router.encoder.sentence_config.folder)
    model = SentenceTransformer(folder, device=str(router.encoder.device))
    starts = router.index.entry_starts

    def run_batch(batch: list[str]) -> np.ndarray:
        vectors = model.encode(batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.maximum.reduceat(vectors @ full_matrix.T, starts, axis=1).argmax(axis=1)

    return (lambda task: run_batch([task]), run_batch)


def _transformers_runtime_modes(router: Router, encoder: Encoder | None) -> tuple[dict[str, Mode], str | None]:
    if encoder is None:
        if router.encoder.runtime == "transformers":
            return {}, "the router already runs the transformers runtime: the transformers-runtime modes were skipped"
        encoder = Encoder.from_pretrained(
            router.encoder.sentence_config.folder, runtime="transformers", quantize=router.encoder.quantization
        )

    thresholds = router.thresholds
    use_head = router.head is not None
    cascade = Router(
        router.index,
        encoder,
        margin=thresholds.margin,
        min_score=thresholds.min_score,
        fast_min_score=thresholds.fast_min_score,
        candidates=router.candidates,
        use_head=use_head,
    )
    fast_only = Router(router.index, encoder, margin=-1.0, fast_min_score=None, min_score=None, use_head=use_head)
    modes = {
        "transformers-fast": (fast_only.route, fast_only.route_batch),
        "transformers-cascade": (cascade.route, cascade.route_batch),
    }
    return modes, None


def _semantic_router_baseline(router: Router, model_folder: str | None) -> Mode | None:
    try:
        from semantic_router import IndexedRouter, Route
        from semantic_router.encoders import HuggingFaceEncoder
    except ImportError:
        return None

    # HuggingFaceEncoder loads a plain transformers folder and always
    # mean-pools, so for a CLS- or max-pooled model its vectors differ from
    # this package's. The demo model mean-pools.
    folder = model_folder or str(router.encoder.sentence_config.backbone_folder)
    encoder = HuggingFaceEncoder(name=folder, device=str(router.encoder.device))
    routes = [Route(name=tool.id, utterances=[tool_text(tool), *tool.examples]) for tool in router.index.catalogue]
    # "max" scores a route by its best utterance, as aegis-router scores a tool by its best entry.
    semantic = IndexedRouter(encoder=encoder, routes=routes, aggregation="max")

    def run_batch(batch: list[str]) -> list:
        return [semantic(task) for task in batch]

    return (semantic, run_batch)
