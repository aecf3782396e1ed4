"""Top-1 accuracy and time per task of the fast tier, the full tier and the cascade, in one run.

    python benchmarks/cascade.py --set metatool            # tool descriptions only
    python benchmarks/cascade.py --set clinc150 --examples 10
    python benchmarks/cascade.py --set clinc150 --examples 10 --quantize int8

Top-1 covers the split's in-scope queries. Abstention is off unless
``--min-score`` is given, so the three modes are compared on choosing a tool
alone; with it, an in-scope query that gets "no tool" counts as wrong. Time is the mean wall-clock
time of routing one task at a time, over a sample, for each mode in turn.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from public_sets import load_catalogue, load_queries  # noqa: E402

from aegis_router import Encoder, Router  # noqa: E402
from aegis_router.evaluation import ScoreTable, evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="metatool", help="benchmark folder name (default metatool)")
    parser.add_argument("--split", default="dev", help="query split (default dev)")
    parser.add_argument("--examples", type=int, default=0, help="training queries per tool used as examples")
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    parser.add_argument("--runtime", choices=("lean", "transformers"), default="lean", help="how layers run (default lean)")
    parser.add_argument("--quantize", choices=("int8",), help="run the linear layers in int8 (default: float32)")
    parser.add_argument("--margin", type=float, help="escalation margin (default: the model profile's)")
    parser.add_argument("--min-score", type=float, default=-math.inf, help="full-tier score below which no tool fits (default: off)")
    parser.add_argument("--timed", type=int, default=300, help="tasks timed one at a time per mode (default 300)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--data", help="folder of the public benchmarks (default ../shared/benchmarks)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder = Encoder.from_pretrained(args.model, runtime=args.runtime, quantize=args.quantize)
    catalogue = load_catalogue(args.set, data=args.data, examples_per_tool=args.examples)
    queries = load_queries(args.set, data=args.data, split=args.split)
    router = Router.from_catalogue(catalogue, encoder, margin=args.margin, min_score=args.min_score)
    print(
        f"{args.set} {args.split}: {len(queries)} queries, {len(catalogue)} tools, {args.examples} examples per tool; "
        f"model {encoder.name} ({encoder.runtime} runtime, {encoder.quantization or 'float32'}); "
        f"fast {router.fast_tier.key}, full {router.full_tier.key}, margin {router.thresholds.margin}"
    )

    table = ScoreTable.compute(router, queries, batch_size=64, show_progress=True)
    result = evaluate(router, queries, table=table)

    texts = [query.text for query in random.Random(0).sample(queries, min(args.timed, len(queries)))]
    fast_only = Router(router.index, encoder, margin=-1.0, fast_min_score=None)
    modes = {
        "fast": fast_only.route,
        "full": lambda text: router.score([text], router.full_tier),
        "cascade": router.route,
    }
    for text in texts[:20]:
        for run in modes.values():
            run(text)
    times = {name: [] for name in modes}
    for text in texts:
        for name, run in modes.items():
            started = time.perf_counter()
            run(text)
            times[name].append((time.perf_counter() - started) * 1000)

    full_ms = statistics.mean(times["full"])
    print(f"\n{'mode':<9}{'top-1':>8}{'recall@5':>10}{'escalated':>11}{'mean ms':>9}{'x full time':>12}")
    figures = {}
    for name in modes:
        row = getattr(result, name)
        mean_ms = statistics.mean(times[name])
        escalated = row.get("escalation_rate", 1.0 if name == "full" else 0.0)
        figures[name] = {**row, "mean_ms": mean_ms, "time_ratio_to_full": mean_ms / full_ms}
        print(f"{name:<9}{row['top1']:>8.3f}{row['recall@5']:>10.3f}{escalated:>11.1%}{mean_ms:>9.2f}{mean_ms / full_ms:>12.2f}")

    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
