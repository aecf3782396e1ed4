"""The ``aegis-router`` command line: build an index, route tasks, evaluate and calibrate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import AegisRouterError
from .tiers import Tier

logger = logging.getLogger("aegis_router.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.run(args)
    except (AegisRouterError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"aegis-router: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis-router", description="Route an agent's task to the right tool with an early-exit cascade."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-v) or debug details (-vv)")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="embed a tool catalogue into an index folder")
    index.add_argument("catalogue", nargs="+", type=Path, help="tool files (JSON, JSONL, YAML) or Agent Skills folders")
    index.add_argument("-o", "--output", type=Path, required=True, help="index folder to write (replaced atomically)")
    index.add_argument(
        "--model",
        default="demo",
        help="model folder or hub id; 'demo' (the default) is the bundled all-MiniLM-L6-v2, English only",
    )
    index.add_argument("--fast-tier", type=_tier_argument, help="fast tier as LAYERSxDIM, for example 1x384 (default: the model's profile)")
    index.add_argument(
        "--format",
        default="auto",
        choices=("auto", "tools", "openai", "mcp", "skills"),
        help="catalogue format (default auto: detected from each file's content)",
    )
    index.add_argument("--batch-size", type=int, default=32, help="texts per encoder batch (default 32)")
    index.add_argument("--device", help="torch device, for example cpu or cuda (default cpu)")
    index.add_argument("--rebuild", action="store_true", help="embed every tool again instead of reusing unchanged ones")
    index.set_defaults(run=_run_index)

    route = commands.add_parser("route", help="route tasks (arguments, or one per line on standard input)")
    route.add_argument("index", type=Path, help="index folder built by 'aegis-router index'")
    route.add_argument("tasks", nargs="*", help="tasks to route; read from standard input when none are given")
    route.add_argument("--json", action="store_true", help="print one JSON object per task")
    route.add_argument("--k", type=_positive_int, default=3, help="number of ranked candidates to show (default 3)")
    route.add_argument("--margin", type=float, help="override the escalation margin")
    route.add_argument("--min-score", type=float, help="override the full-tier score below which no tool fits")
    route.add_argument("--model", help="model folder or hub id, if it moved since the index was built")
    route.set_defaults(run=_run_route)

    evaluate = commands.add_parser("evaluate", help="measure fast tier, full tier and cascade on labelled queries")
    evaluate.add_argument("index", type=Path, help="index folder built by 'aegis-router index'")
    evaluate.add_argument("queries", type=Path, help='JSONL of {"text", "gold": [ids], "lang"?, "candidates"?}')
    _add_query_options(evaluate)
    evaluate.add_argument("--margin", type=float, help="override the escalation margin")
    evaluate.add_argument("--min-score", type=float, help="override the full-tier score below which no tool fits")
    evaluate.add_argument("--fast-min-score", type=float, help="override the fast-tier score below which a task escalates")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics as JSON to FILE")
    evaluate.add_argument("--plot", type=Path, metavar="FILE.png", help="draw accuracy against escalation rate (needs matplotlib)")
    evaluate.set_defaults(run=_run_evaluate)

    calibrate = commands.add_parser("calibrate", help="fit the escalation thresholds and store them in the index")
    calibrate.add_argument("index", type=Path, help="index folder; its thresholds are replaced")
    calibrate.add_argument("queries", type=Path, help="JSONL queries (with or without 'gold'), or a .txt file of tasks")
    _add_query_options(calibrate)
    calibrate.add_argument(
        "--mode",
        choices=("labels", "agreement"),
        help="'labels' keeps accuracy near the full tier's; 'agreement' needs no labels (default: labels when every query has 'gold')",
    )
    calibrate.add_argument("--tolerance", type=float, default=0.5, help="accuracy points the cascade may lose (default 0.5)")
    calibrate.add_argument("--agreement", type=float, default=0.99, help="share of full-tier decisions to keep (default 0.99)")
    calibrate.add_argument("--dry-run", action="store_true", help="print the fit without writing the index")
    calibrate.set_defaults(run=_run_calibrate)

    head = commands.add_parser("train-head", help="train an exit head that sharpens the fast tier, without labels")
    head.add_argument("index", type=Path, help="index folder; the head is stored in it")
    head.add_argument("texts", nargs="*", type=Path, help="extra training texts: .txt (one per line) or JSONL with 'text'")
    head.add_argument("--no-catalogue", action="store_true", help="do not train on the catalogue's descriptions and examples")
    head.add_argument("--width", type=int, default=1024, help="hidden width of the head (default 1024)")
    head.add_argument("--epochs", type=int, default=30, help="most training epochs; stops early on no gain (default 30)")
    head.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same head (default 0)")
    head.add_argument("--max-texts", type=int, help="use at most this many texts from the given files")
    head.add_argument("--model", help="model folder or hub id, if it moved since the index was built")
    head.set_defaults(run=_run_train_head)

    bench = commands.add_parser("bench", help="time fast tier, full tier and cascade against baselines, in one run")
    bench.add_argument("index", type=Path, help="index folder built by 'aegis-router index'")
    bench.add_argument("queries", type=Path, help="JSONL or .txt tasks to time (not the catalogue's own examples, which match themselves)")
    bench.add_argument("--limit", type=int, default=200, help="tasks to time (default 200)")
    bench.add_argument("--repeats", type=int, default=1, help="times each task is routed per mode (default 1)")
    bench.add_argument("--batch-size", type=int, default=64, help="tasks per batch for throughput (default 64)")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    bench.add_argument("--model", help="model folder or hub id, if it moved since the index was built")
    bench.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        choices=("sentence-transformers", "transformers-runtime", "semantic-router"),
        help="comparison mode to time as well; repeat for several (default: sentence-transformers)",
    )
    bench.add_argument("--quantize", choices=("int8",), help="run the router's linear layers in int8 (default: float32)")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    bench.set_defaults(run=_run_bench)

    serve = commands.add_parser("serve", help="serve routing and OpenAI-compatible embeddings over HTTP")
    serve.add_argument("index", type=Path, help="index folder built by 'aegis-router index'")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--model", help="model folder or hub id, if it moved since the index was built")
    serve.add_argument("--max-batch-size", type=int, default=64, help="most texts grouped into one encoder batch")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request waits for others to batch with")
    serve.add_argument("--no-batching", action="store_true", help="run each request on its own (for comparison)")
    serve.add_argument("--max-inputs", type=int, default=256, help="most texts accepted in one request")
    serve.add_argument("--max-text-chars", type=int, default=16_384, help="maximum length of one text, in characters")
    serve.add_argument("--max-body-bytes", type=int, default=2_000_000, help="largest request body accepted, in bytes")
    serve.set_defaults(run=_run_serve)

    return parser


def _run_index(args: argparse.Namespace) -> int:
    from .building import build_index

    index = build_index(
        args.catalogue,
        args.output,
        model=args.model,
        fast_tier=args.fast_tier,
        catalogue_format=args.format,
        batch_size=args.batch_size,
        device=args.device,
        reuse=not args.rebuild,
    )
    print(
        f"indexed {len(index.catalogue)} tools ({index.entry_count} entries) with {index.model.name} "
        f"at {index.fast_tier} and {index.full_tier} -> {args.output}"
    )
    return 0


def _run_route(args: argparse.Namespace) -> int:
    from .encoder import Encoder
    from .index import Index
    from .router import Router

    tasks = list(args.tasks) or [line.strip() for line in sys.stdin if line.strip()]
    if not tasks:
        raise ValueError("no tasks given: pass them as arguments or one per line on standard input")

    index = Index.load(args.index)
    encoder = Encoder.from_pretrained(args.model or index.model.name)
    router = Router(index, encoder, margin=args.margin, min_score=args.min_score, candidates=max(args.k, 1))
    results = router.route_batch(tasks) if len(tasks) > 1 else [router.route(tasks[0])]

    if args.json:
        for result in results:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0

    for result in results:
        tool = result.tool_id or "(no tool fits)"
        flag = "escalated" if result.escalated else "fast"
        print(f"{result.task}")
        print(
            f"  -> {tool}  score {result.score:.3f}  margin {result.margin:.3f}  "
            f"tier {result.tier.key} ({flag})  {result.ms:.1f} ms"
        )
        others = ", ".join(f"{c.tool.id} {c.score:.3f}" for c in result.candidates[1:])
        if others:
            print(f"     also: {others}")
    return 0


def _tier_argument(text: str) -> Tier:
    try:
        return Tier.parse(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", help="keep only queries whose 'split' field equals this, for example dev")
    parser.add_argument("--limit", type=int, help="use at most this many queries")
    parser.add_argument("--model", help="model folder or hub id, if it moved since the index was built")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default 64)")


def _load_router(args: argparse.Namespace, **thresholds):
    from .encoder import Encoder
    from .index import Index
    from .router import Router

    index = Index.load(args.index)
    encoder = Encoder.from_pretrained(args.model or index.model.name, quantize=getattr(args, "quantize", None))
    return Router(index, encoder, **thresholds)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import ScoreTable, evaluate, format_evaluation, load_queries

    for output in (args.json, args.plot):
        if output is not None and not output.resolve().parent.is_dir():
            raise ValueError(f"cannot write {output}: folder {output.resolve().parent} does not exist")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        args.plot = args.plot.with_name(args.plot.name + ".png")

    queries = load_queries(args.queries, split=args.split, limit=args.limit)
    router = _load_router(args, margin=args.margin, min_score=args.min_score, fast_min_score=args.fast_min_score)
    table = ScoreTable.compute(router, queries, batch_size=args.batch_size)
    result = evaluate(router, queries, table=table)
    print(format_evaluation(result))

    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    if args.plot:
        from .plotting import plot_trade_off

        plot_trade_off(table, router.thresholds, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate
    from .evaluation import ScoreTable, load_queries

    queries = load_queries(args.queries, split=args.split, limit=args.limit)
    router = _load_router(args)
    table = ScoreTable.compute(router, queries, batch_size=args.batch_size)
    fitted = calibrate(
        table,
        mode=args.mode,
        tolerance=args.tolerance,
        agreement=args.agreement,
        min_score=router.thresholds.min_score,
        source=str(args.queries),
    )
    print(f"calibrated on {len(queries)} queries ({fitted.mode}): {fitted.summary()}")
    if args.dry_run:
        return 0
    router.index.with_thresholds(fitted.thresholds).save(args.index)
    print(f"thresholds written to {args.index}")
    return 0


def _run_train_head(args: argparse.Namespace) -> int:
    from .building import train_index_head
    from .evaluation import load_queries

    texts: list[str] = []
    for path in args.texts:
        texts.extend(query.text for query in load_queries(path))
    if args.max_texts is not None:
        texts = texts[: args.max_texts]

    router = _load_router(args)
    index = train_index_head(
        router.index,
        router.encoder,
        texts,
        include_catalogue=not args.no_catalogue,
        width=args.width,
        epochs=args.epochs,
        seed=args.seed,
    )
    index.save(args.index)
    training = index.head_info.training
    print(
        f"exit head trained on {training['texts']} texts ({training['epochs_run']} epochs, best {training['best_epoch']}): "
        f"held-out agreement with the full tier {training['agreement']:.2%}; saved in {args.index}"
    )
    if router.thresholds.source == "calibration":
        print("the index's thresholds were calibrated without this head: run `aegis-router calibrate` again")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    from .evaluation import load_queries

    router = _load_router(args)
    tasks = [query.text for query in load_queries(args.queries, limit=args.limit)]
    report = run_bench(
        router,
        tasks,
        repeats=args.repeats,
        batch_size=args.batch_size,
        threads=args.threads,
        baselines=args.baselines or ("sentence-transformers",),
    )
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from .service import serve

    # A server's start, address and stop are worth seeing without -v.
    logging.getLogger("aegis_router.service").setLevel(min(logging.INFO, logging.getLogger().level))
    return serve(args)


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbosity == 0:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
