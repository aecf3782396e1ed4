"""Exit heads on the demo model: fast tier, full tier and cascade, with and without a head, in one run.

The head is trained without labels on texts from sets other than the ones
evaluated (BANKING77 and HWU64 utterances and BFCL function descriptions); calibration is label-free at 0.99 agreement with the
full tier, on the evaluated split's texts (their labels are not used).

    python benchmarks/exit_heads.py [--texts 12000] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_sets import data_folder, load_catalogue, load_queries  # noqa: E402

from aegis_router import Encoder, Index, Router, Thresholds, Tier  # noqa: E402
from aegis_router.calibration import calibrate  # noqa: E402
from aegis_router.evaluation import Query, ScoreTable, evaluate  # noqa: E402
from aegis_router.heads import train_head  # noqa: E402

# Set name -> training utterances per intent used as tool examples (xSID has no training split here).
EVALUATED = {"clinc150": 10, "metatool": 0, "xsid": 0}


def training_texts(data: Path, limit: int, seed: int) -> tuple[list[str], dict[str, int]]:
    texts: dict[str, list[str]] = {}
    for name in ("banking77", "hwu64"):
        texts[name] = [query.text for query in load_queries(name, data=data)]
    texts["bfcl"] = [json.loads(line)["description"] for line in (data / "bfcl" / "tools.jsonl").read_text().splitlines()]

    rng = random.Random(seed)
    pool = [(name, text) for name, rows in texts.items() for text in rows]
    rng.shuffle(pool)
    chosen = pool[:limit]
    counts: dict[str, int] = {}
    for name, _ in chosen:
        counts[name] = counts.get(name, 0) + 1
    return [text for _, text in chosen], counts


def measure(name: str, encoder: Encoder, head, info, fast: Tier, data: Path, split: str) -> dict:
    catalogue = load_catalogue(name, data=data, examples_per_tool=EVALUATED.get(name, 0))
    queries = load_queries(name, data=data, split=split)
    plain = Index.build(catalogue, encoder, fast_tier=fast, full_tier=encoder.full_tier, thresholds=Thresholds(margin=0.05))
    headed = plain.with_head(head, info, encoder)

    figures = {}
    for label, index in (("without head", plain), ("with head", headed)):
        router = Router(index, encoder)
        table = ScoreTable.compute(router, queries)
        unlabelled = ScoreTable(
            tuple(Query(text=q.text) for q in queries), table.tool_ids, table.fast, table.full, head=table.head
        )
        fitted = calibrate(unlabelled, mode="agreement", agreement=0.99, min_score=None)
        calibrated = Router(index.with_thresholds(fitted.thresholds), encoder)
        result = evaluate(calibrated, queries, table=table)
        figures[label] = {
            "fast_top1": result.fast["top1"],
            "full_top1": result.full["top1"],
            "cascade_top1": result.cascade["top1"],
            "escalation_rate": result.cascade["escalation_rate"],
            "margin": fitted.thresholds.margin,
            "by_language": {
                lang: {tier: rows[tier].get("top1") for tier in ("fast", "full", "cascade")}
                | {"escalation_rate": rows["cascade"]["escalation_rate"]}
                for lang, rows in result.by_language.items()
            },
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=12000, help="training texts (default 12000)")
    parser.add_argument("--epochs", type=int, default=30, help="most training epochs (default 30)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="fast-tier depths to measure")
    parser.add_argument("--sets", nargs="+", default=list(EVALUATED), help="sets to evaluate")
    parser.add_argument("--data", help="folder of the public benchmarks (default ../shared/benchmarks)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = data_folder(args.data)

    encoder = Encoder.from_pretrained("demo")
    texts, sources = training_texts(data, args.texts, seed=0)
    print(f"training texts: {len(texts)} {sources}")

    report = {}
    for layers in args.layers:
        fast = Tier(layers, encoder.hidden_size)
        started = time.perf_counter()
        trained = train_head(encoder, texts, fast, encoder.full_tier, epochs=args.epochs, sources=sources)
        print(
            f"\nfast tier {fast.key}: head trained in {time.perf_counter() - started:.0f} s, "
            f"held-out cosine to the full tier {trained.info.training['agreement_without_head']:.3f} -> "
            f"{trained.info.training['agreement']:.3f}"
        )
        for name in args.sets:
            split = "dev"
            figures = measure(name, encoder, trained.head, trained.info, fast, data, split)
            report[f"{name} {fast.key}"] = figures
            for label, row in figures.items():
                print(
                    f"  {name:<9} {label:<13} full {row['full_top1']:.3f}  fast {row['fast_top1']:.3f}  "
                    f"cascade {row['cascade_top1']:.3f} at {row['escalation_rate']:.1%} escalated (margin {row['margin']:.4f})"
                )
            if name == "xsid":
                for lang, row in figures["with head"]["by_language"].items():
                    raw = figures["without head"]["by_language"][lang]
                    print(
                        f"    {lang:<4} full {row['full']:.3f}  fast {raw['fast']:.3f} -> {row['fast']:.3f} with head  "
                        f"cascade {row['cascade']:.3f} at {row['escalation_rate']:.1%}"
                    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
