"""Time of a shallow pass relative to the full pass, on the same batch, in one run.

    python benchmarks/layer_scaling.py [--model demo] [--layers 1 2 3 6] [--repeats 20]

Each depth encodes the same batch of example tasks; depths take turns in every
repeat, so a slow spell on the machine hits all of them alike. The median time
of each depth is printed with its ratio to the deepest one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from aegis_router import Encoder, Tier

TASKS = Path(__file__).resolve().parent.parent / "examples" / "tasks.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 6], help="depths to time")
    parser.add_argument("--batch", type=int, default=32, help="tasks in the batch (default 32)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per depth (default 20)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--runtime", choices=("lean", "transformers"), default="lean", help="how layers run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder = Encoder.from_pretrained(args.model, runtime=args.runtime)
    texts = [json.loads(line)["text"] for line in TASKS.read_text(encoding="utf-8").splitlines() if line.strip()]
    batch = texts[: args.batch]
    tiers = [Tier(layers, encoder.hidden_size) for layers in args.layers]

    for tier in tiers:
        encoder.encode(batch, tier, batch_size=len(batch))
    times: dict[Tier, list[float]] = {tier: [] for tier in tiers}
    for _ in range(args.repeats):
        for tier in tiers:
            started = time.perf_counter()
            encoder.encode(batch, tier, batch_size=len(batch))
            times[tier].append((time.perf_counter() - started) * 1000)

    deepest = statistics.median(times[tiers[-1]])
    print(f"{encoder.name}, {encoder.runtime} runtime, batch of {len(batch)} tasks, {torch.get_num_threads()} threads")
    print(f"{'layers':>7}{'median ms':>11}{'x deepest':>11}{'layers ratio':>14}")
    for tier in tiers:
        median = statistics.median(times[tier])
        print(f"{tier.layers:>7}{median:>11.2f}{median / deepest:>11.2f}{tier.layers / tiers[-1].layers:>14.2f}")


if __name__ == "__main__":
    main()
