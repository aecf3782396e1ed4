"""Full-tier bulk encoding throughput against SentenceTransformer.encode, on the same texts, in one run.

    python benchmarks/bulk_encoding.py [--texts 2000] [--batch-size 32]

Both encode the same MetaTool queries at full depth and width; the two take
turns over a few rounds and the best round of each counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from public_sets import load_queries  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from aegis_router import Encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="texts to encode (default 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch for both (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each counts (default 3)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--data", help="folder of the public benchmarks (default ../shared/benchmarks)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = [query.text for query in load_queries("metatool", data=args.data, split="dev")][: args.texts]
    encoder = Encoder.from_pretrained("demo")
    baseline = SentenceTransformer(str(encoder.sentence_config.folder), device="cpu")

    runs = {
        f"aegis-router ({encoder.runtime})": lambda: encoder.encode(texts, encoder.full_tier, batch_size=args.batch_size),
        "SentenceTransformer.encode": lambda: baseline.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
        ),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)

    print(f"{len(texts)} texts, batch size {args.batch_size}, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"{name:<32}{len(texts) / seconds:>9.1f} texts/s")
    names = list(best)
    print(f"ratio: {best[names[1]] / best[names[0]]:.2f}x")


if __name__ == "__main__":
    main()
