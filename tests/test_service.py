"""The HTTP service, run by a real uvicorn on a free loopback port, with the demo model."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from aegis_router import AegisRouterError, MissingExtraError, Router, Tier, build_index
from aegis_router.service import ServiceSettings, create_app, serve

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = [ROOT / "examples" / "catalogue" / "tools.yaml", ROOT / "examples" / "catalogue" / "skills"]
TASKS = [json.loads(line)["text"] for line in (ROOT / "examples" / "tasks.jsonl").read_text().splitlines()[:8]]
TEXTS = ["search the code for the failing build", "what's on my calendar thursday morning", "hi"]

# Small limits, so that every limit can be crossed with a small request.
LIMITS = ServiceSettings(max_batch_size=16, max_wait_ms=10, max_inputs=8, max_text_chars=400, max_body_bytes=4096)


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def running_server(app):
    """Run ``app`` with uvicorn on a free 127.0.0.1 port in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", ws="none", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def index_path(demo_encoder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("service") / "index"
    build_index(CATALOGUE, path, model=demo_encoder)
    return path


@pytest.fixture(scope="module")
def router(index_path, demo_encoder) -> Router:
    from aegis_router import Index

    return Router(Index.load(index_path), demo_encoder, candidates=8)


@pytest.fixture(scope="module")
def server(router):
    with running_server(create_app(router, LIMITS)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def openai_client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30) as api:
        yield api


def metric_samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse /metrics into {(sample name, sorted labels): value}."""
    response = http.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def token_count(encoder, text: str) -> int:
    return len(encoder._tokenizer.encode(text).ids)


# Embeddings through the official OpenAI client.


def test_embeddings_list_matches_encoder(openai_client, demo_encoder):
    response = openai_client.embeddings.create(model="demo", input=TEXTS, encoding_format="float")

    assert [item.index for item in response.data] == [0, 1, 2]
    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, demo_encoder.encode(TEXTS, demo_encoder.full_tier), atol=1e-5)
    assert response.model == "demo"
    expected_tokens = sum(token_count(demo_encoder, text) for text in TEXTS)
    assert response.usage.prompt_tokens == expected_tokens
    assert response.usage.total_tokens == expected_tokens


def test_embeddings_single_input(openai_client, demo_encoder):
    response = openai_client.embeddings.create(model="demo", input=TEXTS[0], encoding_format="float")

    assert len(response.data) == 1
    np.testing.assert_allclose(response.data[0].embedding, demo_encoder.encode(TEXTS[0]), atol=1e-5)
    assert response.usage.prompt_tokens == token_count(demo_encoder, TEXTS[0])


def test_embeddings_dimensions(openai_client, demo_encoder):
    response = openai_client.embeddings.create(model="demo", input=TEXTS, dimensions=64, encoding_format="float")

    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(vectors, demo_encoder.encode(TEXTS, Tier(6, 64)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embeddings_layers_extension(openai_client, demo_encoder):
    response = openai_client.embeddings.create(
        model="demo", input=TEXTS, dimensions=128, encoding_format="float", extra_body={"layers": 2}
    )

    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, demo_encoder.encode(TEXTS, Tier(2, 128)), atol=1e-5)
    assert not np.allclose(vectors, demo_encoder.encode(TEXTS, Tier(6, 128)), atol=1e-3)


def test_embeddings_base64(openai_client, demo_encoder):
    response = openai_client.embeddings.create(model="demo", input=TEXTS, dimensions=32, encoding_format="base64")

    for item, expected in zip(response.data, demo_encoder.encode(TEXTS, Tier(6, 32))):
        assert isinstance(item.embedding, str)
        decoded = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        np.testing.assert_allclose(decoded, expected, atol=1e-5)


def test_embeddings_client_default_format(openai_client, demo_encoder):
    # Without encoding_format the client asks for base64 and decodes it itself.
    response = openai_client.embeddings.create(model="demo", input=TEXTS)

    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, demo_encoder.encode(TEXTS), atol=1e-5)


def test_embeddings_unknown_model_via_client(openai_client):
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client.embeddings.create(model="text-embedding-3-small", input="hello")

    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
    assert "demo" in raised.value.message


def test_embeddings_too_many_dimensions_via_client(openai_client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        openai_client.embeddings.create(model="demo", input="hello", dimensions=385)

    assert raised.value.param == "dimensions"
    assert "384" in raised.value.message


def test_models_lists_served_model(openai_client):
    models = openai_client.models.list()

    assert [model.id for model in models.data] == ["demo"]


# Routing, selection, health and metrics over httpx.


def test_route_single_matches_router(client, router):
    for task in TASKS:
        response = client.post("/v1/route", json={"task": task})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = router.route(task)
        assert body["task"] == task
        assert body["tool"] == expected.tool_id
        assert body["escalated"] == expected.escalated
        assert body["tier"] == expected.tier.to_dict()
        assert len(body["candidates"]) == 5


def test_route_list_keeps_order_and_k(client, router):
    response = client.post("/v1/route", json={"task": TASKS[:4], "k": 2})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["task"] for result in results] == TASKS[:4]
    assert [result["tool"] for result in results] == [result.tool_id for result in router.route_batch(TASKS[:4])]
    assert all(len(result["candidates"]) == 2 for result in results)


def test_select_matches_router(client, router):
    task = TASKS[0]
    response = client.post("/v1/select", json={"task": task, "k": 3})

    assert response.status_code == 200, response.text
    body = response.json()
    expected = router.select(task, 3)
    assert [tool["tool"] for tool in body["tools"]] == [tool.id for tool in expected.tools]
    assert body["escalated"] == expected.escalated
    assert body["tier"] == expected.tier.to_dict()


def test_healthz(client, router):
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["tools"] == len(router.index.catalogue)
    assert body["batching"] is True


def test_metrics_count_routed_tasks_by_tier(client, router):
    fast, full = router.fast_tier.key, router.full_tier.key
    before = metric_samples(client)

    response = client.post("/v1/route", json={"task": TASKS})
    assert response.status_code == 200
    results = response.json()["results"]
    escalated = sum(result["escalated"] for result in results)
    after = metric_samples(client)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("aegis_http_requests_total", endpoint="/v1/route", status="200") == 1
    assert delta("aegis_tasks_total", endpoint="/v1/route", tier=full) == escalated
    assert delta("aegis_tasks_total", endpoint="/v1/route", tier=fast) == len(TASKS) - escalated
    assert delta("aegis_escalations_total", endpoint="/v1/route") == escalated
    assert delta("aegis_tier_latency_seconds_count", endpoint="/v1/route", tier=full) == escalated
    assert delta("aegis_tier_latency_seconds_count", endpoint="/v1/route", tier=fast) == len(TASKS) - escalated
    assert delta("aegis_encoder_batch_size_sum", kind="route") == len(TASKS)


def test_metrics_count_errors_by_status(client):
    before = metric_samples(client)
    client.post("/v1/route", content=b"{not json")
    client.get("/no/such/path")
    after = metric_samples(client)

    assert metric(after, "aegis_http_requests_total", endpoint="/v1/route", status="400") == (
        metric(before, "aegis_http_requests_total", endpoint="/v1/route", status="400") + 1
    )
    assert metric(after, "aegis_http_requests_total", endpoint="other", status="404") == (
        metric(before, "aegis_http_requests_total", endpoint="other", status="404") + 1
    )


# Limits and malformed bodies: every rejection is an OpenAI-style error object.

LONG = "y" * 401
REJECTED = [
    # (id, path, body as JSON or raw bytes, status, code, param)
    ("too many tasks", "/v1/route", {"task": ["route me"] * 9}, 422, "too_many_inputs", "task"),
    ("too many inputs", "/v1/embeddings", {"input": ["a"] * 9, "model": "demo"}, 422, "too_many_inputs", "input"),
    ("long task in list", "/v1/route", {"task": ["fine", LONG]}, 422, "text_too_long", "task[1]"),
    ("long single input", "/v1/embeddings", {"input": LONG, "model": "demo"}, 422, "text_too_long", "input"),
    ("long select task", "/v1/select", {"task": LONG}, 422, "text_too_long", "task"),
    ("body too large", "/v1/route", {"task": "z" * 5000}, 413, "request_too_large", None),
    ("malformed json", "/v1/route", b'{"task": ', 400, "invalid_json", None),
    ("not utf-8", "/v1/embeddings", b"\xff\xfe\xfa", 400, "invalid_json", None),
    ("empty body", "/v1/select", b"", 400, "invalid_json", None),
    ("json array body", "/v1/route", b'["a task"]', 400, "invalid_body", None),
    ("missing task", "/v1/route", {"k": 2}, 422, "missing_field", "task"),
    ("missing model", "/v1/embeddings", {"input": "x"}, 422, "missing_field", "model"),
    ("unknown field", "/v1/route", {"task": "x", "top_k": 2}, 422, "unknown_field", "top_k"),
    ("task is a number", "/v1/route", {"task": 5}, 422, "invalid_value", "task"),
    ("task item is null", "/v1/route", {"task": ["a", None]}, 422, "invalid_value", "task"),
    ("select task list", "/v1/select", {"task": ["a"]}, 422, "invalid_value", "task"),
    ("token ids", "/v1/embeddings", {"input": [[101, 2023]], "model": "demo"}, 422, "invalid_value", "input"),
    ("empty list", "/v1/route", {"task": []}, 422, "invalid_value", "task"),
    ("blank text", "/v1/route", {"task": ["a", "  "]}, 422, "invalid_value", "task[1]"),
    ("k zero", "/v1/route", {"task": "x", "k": 0}, 422, "invalid_value", "k"),
    ("k boolean", "/v1/route", {"task": "x", "k": True}, 422, "invalid_value", "k"),
    ("k string", "/v1/select", {"task": "x", "k": "3"}, 422, "invalid_value", "k"),
    ("k over candidates", "/v1/route", {"task": "x", "k": 9}, 422, "invalid_value", "k"),
    ("k over tools", "/v1/select", {"task": "x", "k": 1000}, 422, "invalid_value", "k"),
    ("bad format", "/v1/embeddings", {"input": "x", "model": "demo", "encoding_format": "int8"}, 422,
     "invalid_value", "encoding_format"),
    ("zero dimensions", "/v1/embeddings", {"input": "x", "model": "demo", "dimensions": 0}, 422, "invalid_value",
     "dimensions"),
    ("too many layers", "/v1/embeddings", {"input": "x", "model": "demo", "layers": 7}, 422, "invalid_value",
     "layers"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED]
)
def test_invalid_request_rejected(client, path, body, status, code, param):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


def test_chunked_body_over_limit_rejected(client):
    def chunks():
        yield b'{"task": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    response = client.post("/v1/route", content=chunks())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_path_and_method(client):
    missing = client.get("/v2/route")
    wrong_method = client.get("/v1/route")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"


# Dynamic batching and shutdown.


def post_concurrently(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST each body from its own thread and connection, all released at once."""
    barrier = threading.Barrier(len(bodies))

    def post(body):
        with httpx.Client(base_url=url, timeout=30) as http:
            barrier.wait()
            return http.post(path, json=body)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_concurrent_requests_share_encoder_batches(server, client, router):
    tasks = (TASKS * 2)[:16]
    before = metric_samples(client)

    responses = post_concurrently(server.url, "/v1/route", [{"task": task} for task in tasks])
    after = metric_samples(client)

    assert [response.status_code for response in responses] == [200] * len(tasks)
    assert [response.json()["tool"] for response in responses] == [router.route(task).tool_id for task in tasks]
    batches = metric(after, "aegis_encoder_batches_total", kind="route") - metric(
        before, "aegis_encoder_batches_total", kind="route"
    )
    texts = metric(after, "aegis_encoder_batch_size_sum", kind="route") - metric(
        before, "aegis_encoder_batch_size_sum", kind="route"
    )
    assert texts == len(tasks)
    assert 1 <= batches < len(tasks)


def test_no_batching_runs_each_request_alone(router):
    settings = ServiceSettings(batching=False)
    with running_server(create_app(router, settings)) as running, httpx.Client(base_url=running.url) as http:
        tasks = TASKS[:6]
        responses = post_concurrently(running.url, "/v1/route", [{"task": task} for task in tasks])
        samples = metric_samples(http)
        health = http.get("/healthz").json()

    assert [response.json()["tool"] for response in responses] == [router.route(task).tool_id for task in tasks]
    assert metric(samples, "aegis_encoder_batches_total", kind="route") == len(tasks)
    assert health["batching"] is False


@pytest.mark.slow
def test_shutdown_finishes_queued_requests(router):
    # A long batching wait keeps the requests queued while the server shuts down.
    settings = ServiceSettings(max_wait_ms=1000)
    tasks = TASKS[:4]
    with running_server(create_app(router, settings)) as running:
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            futures = [
                pool.submit(httpx.post, f"{running.url}/v1/route", json={"task": task}, timeout=30) for task in tasks
            ]
            deadline = time.monotonic() + 10
            with httpx.Client(base_url=running.url) as http:
                while metric(metric_samples(http), "aegis_batcher_queued_texts") < len(tasks):
                    assert time.monotonic() < deadline, "requests never reached the batcher"
                    time.sleep(0.01)

            running.server.should_exit = True
            responses = [future.result(timeout=30) for future in futures]
        running.thread.join(timeout=30)
        stopped = not running.thread.is_alive()

    assert [response.status_code for response in responses] == [200] * len(tasks)
    assert [response.json()["tool"] for response in responses] == [router.route(task).tool_id for task in tasks]
    assert stopped
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/healthz", timeout=2)


# Settings, the optional extra, and the serve command.


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"max_inputs": -1}, {"max_text_chars": 1.5}, {"max_body_bytes": True},
     {"max_wait_ms": -0.5}, {"max_wait_ms": float("nan")}],
)
def test_settings_reject_invalid_values(options):
    with pytest.raises(ValueError):
        ServiceSettings(**options)


def test_create_app_without_fastapi(monkeypatch, router):
    monkeypatch.setitem(sys.modules, "fastapi", None)

    with pytest.raises(MissingExtraError, match=re.escape("pip install 'aegis-router[serve]'")):
        create_app(router)


def test_import_loads_no_serve_dependencies():
    code = (
        "import sys, aegis_router, aegis_router.service\n"
        "heavy = ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'torch')\n"
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)

    assert output.stdout.strip() == "[]"


def serve_args(index_path: Path, port: int, host: str = "127.0.0.1") -> argparse.Namespace:
    return argparse.Namespace(
        index=index_path, host=host, port=port, model=None, max_batch_size=64, max_wait_ms=2.0,
        no_batching=False, max_inputs=256, max_text_chars=16_384, max_body_bytes=2_000_000,
    )


def test_serve_busy_port_fails_before_loading(index_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.perf_counter()
        with pytest.raises(AegisRouterError, match=f"cannot listen on 127.0.0.1 port {port}"):
            serve(serve_args(index_path, port))

    assert time.perf_counter() - started < 1.0


def test_serve_rejects_invalid_port(index_path):
    with pytest.raises(ValueError, match="port must be between 0 and 65535"):
        serve(serve_args(index_path, 70_000))


@pytest.mark.slow
def test_serve_command_runs_and_stops_on_sigint(index_path):
    command = [sys.executable, "-m", "aegis_router.cli", "-v", "serve", str(index_path), "--port", "0"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                match = re.search(r"on (http://127\.0\.0\.1:\d+)", lines.get(timeout=1))
                url = match.group(1) if match else None
        assert url is not None, "the serve command never logged its address"

        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.ConnectError):
                health = httpx.get(f"{url}/healthz", timeout=5)
                break
            assert time.monotonic() < deadline, "the server never answered /healthz"
            time.sleep(0.1)
        routed = httpx.post(f"{url}/v1/route", json={"task": TASKS[0]}, timeout=30)

        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()

    assert health.json()["status"] == "ok"
    assert routed.status_code == 200
    assert status == 130
