"""Throughput and latency of `aegis-router serve` under concurrent load, with dynamic batching on and off.

    python benchmarks/load_service.py
    python benchmarks/load_service.py --clients 64 --requests 2000 --endpoint route --torch-threads 1

Builds an index of the example catalogue with the bundled demo model and
starts two servers as subprocesses (`python -m aegis_router.cli serve`) on free
127.0.0.1 ports: one with dynamic batching, one with --no-batching. Concurrent
asyncio clients send one-text requests, taken in turn from
examples/tasks.jsonl. The two modes take turns in --rounds rounds, so a change
in the machine's load during the run affects both alike. Every run is bounded
by --requests and --max-seconds, and the script exits with status 1 if any
request failed.

Client and server share this machine's cores, so the client's own work is part
of the wall-clock figures. Server CPU time per request (read from /proc, so
Linux only) depends less on other programs running at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = [ROOT / "examples" / "catalogue" / "tools.yaml", ROOT / "examples" / "catalogue" / "skills"]
TASKS_FILE = ROOT / "examples" / "tasks.jsonl"
MODES = {"batching": [], "no batching": ["--no-batching"]}
PATHS = {"route": "/v1/route", "embeddings": "/v1/embeddings"}
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


@dataclass
class LoadResult:
    """Figures of one endpoint and mode, summed over the rounds."""

    mode: str
    endpoint: str
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    encoder_calls: float = 0.0
    encoded_texts: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def mean_batch(self) -> float:
        return self.encoded_texts / self.encoder_calls if self.encoder_calls else math.nan

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_seconds * 1000 / self.completed if self.completed else math.nan

    def percentile(self, percent: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else math.nan
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[percent - 1]


def main() -> int:
    args = _parse_args()
    tasks = [json.loads(line)["text"] for line in TASKS_FILE.read_text().splitlines() if line.strip()]
    print(
        f"{platform.machine()} with {os.cpu_count()} cores, python {platform.python_version()}; "
        f"{args.clients} clients, up to {args.requests} requests or {args.max_seconds:g} s per endpoint and mode "
        f"in {args.rounds} rounds; batching waits up to {args.max_wait_ms:g} ms for up to {args.max_batch_size} "
        f"texts; torch threads: {args.torch_threads or 'default'}"
    )
    # Other programs running at the same time skew every figure, so the load is printed with them.
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="aegis-load-") as folder:
        index = Path(folder) / "index"
        build = [sys.executable, "-m", "aegis_router.cli", "index", *map(str, CATALOGUE), "-o", str(index)]
        subprocess.run(build, check=True, timeout=STARTUP_TIMEOUT_S, env=_environment(None))

        servers = {}
        try:
            for mode, flags in MODES.items():
                server_flags = [
                    *flags, "--max-wait-ms", str(args.max_wait_ms), "--max-batch-size", str(args.max_batch_size)
                ]
                log = Path(folder) / f"server-{len(servers)}.log"
                servers[mode] = ServerProcess(index, server_flags, log, _environment(args.torch_threads))
                servers[mode].start()
            results = [
                result
                for endpoint in args.endpoint
                for result in asyncio.run(_load_endpoint(servers, endpoint, tasks, args))
            ]
        finally:
            for server in servers.values():
                server.stop()

    for result in results:
        _print_result(result)
    _print_comparison(results)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    failed = sum(len(result.failures) for result in results)
    if failed:
        print(f"{failed} requests failed; first errors:")
        for result in results:
            for failure in result.failures[:3]:
                print(f"  {result.mode} {result.endpoint}: {failure}")
        return 1
    print("0 requests failed")
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per endpoint and mode (default 1000)")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="time limit per endpoint and mode, in seconds (default 30)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="turns each mode takes per endpoint (default 4)")
    parser.add_argument(
        "--endpoint", nargs="+", choices=tuple(PATHS), default=list(PATHS), help="endpoints to load (default: both)"
    )
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="batching wait passed to the server (default 2)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="texts per encoder batch (default 64)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch threads in the servers, set through OMP_NUM_THREADS (default: torch's own choice)",
    )
    args = parser.parse_args()
    if min(args.clients, args.requests, args.rounds) < 1 or args.max_seconds <= 0:
        parser.error("--clients, --requests, --rounds and --max-seconds must be positive")
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    return args


def _environment(torch_threads: int | None) -> dict[str, str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if torch_threads is not None:
        environment["OMP_NUM_THREADS"] = str(torch_threads)
    return environment


def _free_port() -> int:
    # The port is free when this returns, but another program could take it before
    # the server binds it. On loopback that race is rare enough to accept.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`aegis-router serve` in a subprocess on a free loopback port, with its output in a log file."""

    def __init__(self, index: Path, flags: list[str], log: Path, environment: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "aegis_router.cli", "serve", str(index),
            "--host", "127.0.0.1", "--port", str(self.port), *flags,
        ]
        self.log = log
        self.environment = environment
        self.process: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> None:
        """Start the server and wait until /healthz returns 200."""
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.environment
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start within {STARTUP_TIMEOUT_S} s; its log:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT starts uvicorn's graceful shutdown. Kill the server only if that hangs.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()

    def cpu_seconds(self) -> float:
        """Return the server's user and system CPU time so far, or NaN where /proc is missing."""
        assert self.process is not None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return math.nan
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load_endpoint(
    servers: dict[str, ServerProcess], endpoint: str, tasks: list[str], args: argparse.Namespace
) -> list[LoadResult]:
    results = {mode: LoadResult(mode=mode, endpoint=endpoint) for mode in servers}
    # uvicorn closes a connection after 5 s idle, and a client that reuses it at that
    # moment gets a read error. The other mode's turn idles these connections for
    # longer, so the client drops idle connections first.
    limits = httpx.Limits(
        max_connections=args.clients, max_keepalive_connections=args.clients, keepalive_expiry=1.0
    )
    clients = {mode: httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) for mode, server in servers.items()}
    try:
        for mode, client in clients.items():
            # Warm-up requests open the connections and are not counted.
            await asyncio.gather(*(_post(client, endpoint, tasks, number) for number in range(args.clients)))

        for round_number in range(args.rounds):
            requests = args.requests // args.rounds + (round_number < args.requests % args.rounds)
            for mode, server in servers.items():
                await _run_round(server, clients[mode], results[mode], endpoint, tasks, requests, args)
    finally:
        for client in clients.values():
            await client.aclose()
    return list(results.values())


async def _run_round(
    server: ServerProcess,
    client: httpx.AsyncClient,
    result: LoadResult,
    endpoint: str,
    tasks: list[str],
    requests: int,
    args: argparse.Namespace,
) -> None:
    """Send ``requests`` requests from ``args.clients`` concurrent clients, for at most ``max_seconds / rounds``."""
    calls_before, texts_before = await _batch_totals(client, endpoint)
    cpu_before = server.cpu_seconds()
    next_number = 0
    started = time.perf_counter()
    deadline = started + args.max_seconds / args.rounds

    async def client_loop() -> None:
        nonlocal next_number
        while next_number < requests and time.perf_counter() < deadline:
            number = next_number
            next_number += 1
            sent = time.perf_counter()
            try:
                response = await _post(client, endpoint, tasks, number)
            except httpx.HTTPError as exc:
                result.failures.append(repr(exc))
                continue
            if response.status_code == 200:
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            else:
                result.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(client_loop() for _ in range(args.clients)))
    result.seconds += time.perf_counter() - started
    result.server_cpu_seconds += server.cpu_seconds() - cpu_before
    calls_after, texts_after = await _batch_totals(client, endpoint)
    result.encoder_calls += calls_after - calls_before
    result.encoded_texts += texts_after - texts_before


async def _post(client: httpx.AsyncClient, endpoint: str, tasks: list[str], number: int) -> httpx.Response:
    text = tasks[number % len(tasks)]
    body = {"task": text} if endpoint == "route" else {"input": text, "model": "demo"}
    return await client.post(PATHS[endpoint], json=body)


async def _batch_totals(client: httpx.AsyncClient, endpoint: str) -> tuple[float, float]:
    """Return (encoder calls, texts encoded) for ``endpoint`` from the server's /metrics."""
    text = (await client.get("/metrics")).text
    calls = texts = 0.0
    for line in text.splitlines():
        if line.startswith(f'aegis_encoder_batch_size_count{{kind="{endpoint}"}}'):
            calls = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f'aegis_encoder_batch_size_sum{{kind="{endpoint}"}}'):
            texts = float(line.rsplit(" ", 1)[1])
    return calls, texts


def _print_result(result: LoadResult) -> None:
    print(
        f"{result.endpoint:<11} {result.mode:<12} {result.completed:>5} ok {len(result.failures):>3} failed "
        f"in {result.seconds:6.2f} s  {result.throughput:7.1f} req/s  "
        f"p50 {result.percentile(50):7.1f} ms  p99 {result.percentile(99):7.1f} ms  "
        f"mean batch {result.mean_batch:5.1f} texts  server CPU {result.cpu_ms_per_request:5.2f} ms/request"
    )


def _print_comparison(results: list[LoadResult]) -> None:
    by_key = {(result.endpoint, result.mode): result for result in results}
    for endpoint in dict.fromkeys(result.endpoint for result in results):
        batched, alone = by_key[(endpoint, "batching")], by_key[(endpoint, "no batching")]
        if not alone.throughput or not batched.completed:
            continue
        print(
            f"{endpoint}: batching gives {batched.throughput / alone.throughput:.2f}x the throughput, "
            f"{batched.percentile(50) / alone.percentile(50):.2f}x the p50 and "
            f"{batched.percentile(99) / alone.percentile(99):.2f}x the p99 latency, "
            f"{batched.cpu_ms_per_request / alone.cpu_ms_per_request:.2f}x the server CPU per request "
            "of no batching"
        )


if __name__ == "__main__":
    sys.exit(main())
