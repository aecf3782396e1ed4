"""Lean runtime against the transformers-driven layer loop on the demo model, in one run.

    python benchmarks/lean_speed.py [--threads 1] [--repeats 300]

The script prints three tables. The first is the time per layer of one
12-token task through the transformers-driven loop, the lean float32 pass and
the lean int8 pass. The second is the route p50 of the fast tier and of the
cascade for each runtime, over the example catalogue and tasks. The third is
the cosine between int8 and float32 vectors. Runtimes take turns throughout
the run, so a slow spell on a shared machine hits all of them alike. Only the
ratios within one run are meant to be compared.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from aegis_router import Catalogue, Encoder, Router, Tier

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TASK = "Deploy the payments service to staging and tail its logs"


def load_encoders() -> dict[str, Encoder]:
    return {
        "transformers": Encoder.from_pretrained("demo", runtime="transformers"),
        "lean": Encoder.from_pretrained("demo", runtime="lean"),
        "lean int8": Encoder.from_pretrained("demo", runtime="lean", quantize="int8"),
    }


def time_layers(encoders: dict[str, Encoder], repeats: int, block: int = 4) -> dict[str, float]:
    """Median milliseconds per layer of a full-depth pass over TASK, embedding excluded.

    Runtimes take turns in blocks of ``block`` passes. The first pass of each
    block is not counted, so every counted pass finds its own runtime's
    weights in the CPU caches, as a router serving a stream of tasks does.
    """
    any_encoder = next(iter(encoders.values()))
    batch = any_encoder._pad(any_encoder._tokenize([TASK], None))
    depth = any_encoder.depth
    samples: dict[str, list[float]] = {name: [] for name in encoders}
    with torch.inference_mode():
        embedded = {name: encoder.backbone.embed(batch.input_ids) for name, encoder in encoders.items()}
        for _ in range(max(1, repeats // (block - 1))):
            for name, encoder in encoders.items():
                for repeat in range(block):
                    started = time.perf_counter()
                    encoder.backbone.run_layers(embedded[name], batch.attention_mask, 0, depth)
                    if repeat > 0:
                        samples[name].append((time.perf_counter() - started) * 1000 / depth)
    return {name: statistics.median(values) for name, values in samples.items()}


def time_routes(encoders: dict[str, Encoder], tasks: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of routing one task, fast tier only and cascade, per runtime."""
    catalogue = Catalogue.load(EXAMPLES / "catalogue" / "tools.yaml", EXAMPLES / "catalogue" / "skills")
    modes = {}
    for name, encoder in encoders.items():
        cascade = Router.from_catalogue(catalogue, encoder)
        fast_only = Router(cascade.index, encoder, margin=-1.0, fast_min_score=None, min_score=None)
        modes[name, "fast"] = fast_only.route
        modes[name, "cascade"] = cascade.route

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in modes}
    for task in tasks[:10]:
        for route in modes.values():
            route(task)
    for _ in range(repeats):
        for task in tasks:
            for key, route in modes.items():
                started = time.perf_counter()
                route(task)
                samples[key].append((time.perf_counter() - started) * 1000)

    result: dict[str, dict[str, float]] = {}
    for (name, mode), values in samples.items():
        result.setdefault(name, {})[mode] = statistics.median(values)
    return result


def int8_agreement(encoders: dict[str, Encoder], texts: list[str]) -> dict[str, dict[str, float]]:
    """Cosine between int8 and float32 lean vectors at a shallow and the full tier."""
    result = {}
    for tier in (Tier(1, 384), Tier(6, 384), Tier(6, 64)):
        float_vectors = encoders["lean"].encode(texts, tier)
        int8_vectors = encoders["lean int8"].encode(texts, tier)
        cosines = (float_vectors * int8_vectors).sum(axis=1)
        result[tier.key] = {"mean": float(cosines.mean()), "min": float(cosines.min())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=300, help="timed full-depth passes per runtime (default 300)")
    parser.add_argument("--route-repeats", type=int, default=3, help="passes over the example tasks per mode (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    encoders = load_encoders()
    tokens = len(encoders["lean"]._tokenize([TASK], None)[0])
    tasks = [json.loads(line)["text"] for line in (EXAMPLES / "tasks.jsonl").read_text(encoding="utf-8").splitlines()]
    print(f"demo model, {torch.get_num_threads()} torch threads, task of {tokens} tokens: {TASK!r}")

    per_layer = time_layers(encoders, args.repeats)
    base = per_layer["transformers"]
    print(f"\n{'runtime':<14}{'ms per layer':>14}{'speed-up':>10}")
    for name, value in per_layer.items():
        print(f"{name:<14}{value:>14.3f}{base / value:>9.2f}x")

    routes = time_routes(encoders, tasks, args.route_repeats)
    print(f"\nroute p50 over {len(tasks)} example tasks, {args.route_repeats} passes")
    print(f"{'runtime':<14}{'fast ms':>9}{'cascade ms':>12}{'fast speed-up':>15}{'cascade speed-up':>18}")
    for name, value in routes.items():
        fast_ratio = routes["transformers"]["fast"] / value["fast"]
        cascade_ratio = routes["transformers"]["cascade"] / value["cascade"]
        print(f"{name:<14}{value['fast']:>9.2f}{value['cascade']:>12.2f}{fast_ratio:>14.2f}x{cascade_ratio:>17.2f}x")

    agreement = int8_agreement(encoders, tasks)
    print(f"\nint8 against float32 lean vectors, cosine over {len(tasks)} example tasks")
    for tier, values in agreement.items():
        print(f"{tier:<8} mean {values['mean']:.5f}  min {values['min']:.5f}")

    if args.json:
        figures = {"threads": torch.get_num_threads(), "ms_per_layer": per_layer, "route_p50_ms": routes, "int8_cosine": agreement}
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
