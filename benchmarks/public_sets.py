"""Loading the public routing benchmarks (MetaTool, CLINC150, ...) as catalogues and queries.

The data lives outside the repository, in ``../shared/benchmarks`` next to the
clone by default (``--data`` or ``AEGIS_BENCHMARKS`` point elsewhere). Each set
has ``tools.jsonl`` and ``queries.jsonl``. Fields that aegis-router's tool
model does not have (``domain``, ``description_for_model``, ...) go into the
tool's metadata. Sets whose tools are only intent names get their training
utterances as examples, which is how such routers are used.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

from aegis_router import Catalogue, Tool
from aegis_router.evaluation import Query

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("AEGIS_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
TOOL_FIELDS = ("id", "name", "description", "parameters")


def data_folder(path: str | Path | None = None) -> Path:
    folder = Path(path) if path else DEFAULT_DATA
    if not (folder / "README.md").is_file():
        raise SystemExit(f"benchmark data not found at {folder}; pass --data or set AEGIS_BENCHMARKS")
    return folder


def load_catalogue(
    name: str,
    *,
    data: str | Path | None = None,
    examples_per_tool: int = 0,
    description_field: str = "description",
    seed: int = 0,
) -> Catalogue:
    """Read a set's tools; add up to ``examples_per_tool`` training queries per tool as examples."""
    folder = data_folder(data) / name
    examples: dict[str, list[str]] = defaultdict(list)
    if examples_per_tool:
        by_tool: dict[str, list[str]] = defaultdict(list)
        for query in _rows(folder / "queries.jsonl"):
            if query.get("split") == "train" and len(query["gold"]) == 1:
                by_tool[query["gold"][0]].append(query["text"])
        rng = random.Random(seed)
        for tool_id, texts in by_tool.items():
            examples[tool_id] = rng.sample(texts, min(examples_per_tool, len(texts)))

    tools = []
    for row in _rows(folder / "tools.jsonl"):
        description = row.get(description_field) or row["description"]
        tools.append(
            Tool(
                id=row["id"],
                name=row.get("name", row["id"]),
                description=description,
                examples=tuple(examples.get(row["id"], ())),
                parameters=row.get("parameters") or {"type": "object", "properties": {}},
                metadata={key: value for key, value in row.items() if key not in TOOL_FIELDS},
            )
        )
    return Catalogue(tools)


def load_queries(name: str, *, data: str | Path | None = None, split: str | None = None) -> list[Query]:
    """Read a set's queries, keeping only ``split`` when it is given."""
    rows = _rows(data_folder(data) / name / "queries.jsonl")
    return [Query(**row) for row in rows if split is None or row.get("split") == split]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    import argparse
    import logging

    from aegis_router import build_index

    parser = argparse.ArgumentParser(description="Build an aegis-router index of a public benchmark's tools.")
    parser.add_argument("set", help="benchmark folder name, for example metatool or clinc150")
    parser.add_argument("-o", "--output", type=Path, required=True, help="index folder to write")
    parser.add_argument("--examples", type=int, default=0, help="training queries per tool used as examples")
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    parser.add_argument("--data", help="folder of the public benchmarks (default ../shared/benchmarks)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    catalogue = load_catalogue(args.set, data=args.data, examples_per_tool=args.examples)
    staging = args.output.with_suffix(".catalogue.json")
    staging.write_text(catalogue.to_json(), encoding="utf-8")
    try:
        build_index([staging], args.output, model=args.model)
    finally:
        staging.unlink()


if __name__ == "__main__":
    main()
