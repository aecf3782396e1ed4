"""The HTTP service: routing, tool selection and OpenAI-compatible embeddings, on FastAPI and uvicorn.

Endpoints:

- ``POST /v1/route`` with ``{"task": TEXT or [TEXT, ...], "k": INT}``. One task
  returns its routing result as an object, a list returns
  ``{"results": [...]}`` in input order. ``k`` (default 5) is the number of
  ranked candidates kept in each result.
- ``POST /v1/select`` with ``{"task": TEXT, "k": INT}`` returns the k best tools.
- ``POST /v1/embeddings``: the OpenAI embeddings request and response, plus
  ``layers`` (default: every layer) to embed at a shallower tier.
- ``GET /v1/models``, ``GET /healthz``, and ``GET /metrics`` in the
  Prometheus text format.

Routing and embedding requests that arrive together share one encoder call
(see :mod:`aegis_router.batching`). Errors are JSON in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with these statuses:

- 400 for a body that is not a JSON object;
- 413 for a body larger than ``max_body_bytes``;
- 422 for a missing, unknown or invalid field, and for a text or input count over its limit;
- 404 for an unknown model or path, and 503 while shutting down.

The service has no authentication, so ``aegis-router serve`` binds 127.0.0.1
unless ``--host`` names another address. FastAPI, uvicorn and prometheus-client come with the ``serve``
extra and are imported only when an app is created.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints'
# parameter annotations at runtime, and fastapi is imported inside create_app.

import argparse
import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batching import BatcherClosedError, DirectRunner, DynamicBatcher, Runner
from .errors import AegisRouterError, MissingExtraError
from .service_metrics import MetricsMiddleware, ServiceMetrics
from .service_schema import (
    Body,
    EmbeddingsRequest,
    RequestError,
    RouteRequest,
    SelectRequest,
    ServiceSettings,
    check_texts,
    count_tokens,
    format_vector,
    read_body,
    route_payload,
    selection_payload,
)
from .tiers import Tier

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

SERVE_EXTRA = "pip install 'aegis-router[serve]'"
MAX_ROUTE_CANDIDATES = 20
"""Ranked candidates the router computes per task when ``serve`` builds it: the largest ``k`` of /v1/route."""
DEFAULT_K = 5

ROUTE_KEY = "route"


class _Service:
    """The request handlers, independent of how they are mounted."""

    def __init__(self, router: "Router", settings: ServiceSettings, prometheus: Any) -> None:
        self.router = router
        self.encoder = router.encoder
        self.settings = settings
        self.model_names = {self.encoder.name, router.index.model.name}
        self.created = int(time.time())
        if settings.batching:
            self.runner: Runner = DynamicBatcher(
                self._run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms
            )
        else:
            self.runner = DirectRunner(self._run_batch)
        self.metrics = ServiceMetrics(prometheus, lambda: self.runner.queued_items)

    def _run_batch(self, key: Hashable, texts: list[str]) -> list[Any]:
        """Run one encoder call for a batch of texts. The runner calls it in a worker thread."""
        started = time.perf_counter()
        if isinstance(key, Tier):
            kind = "embeddings"
            vectors = self.encoder.encode(texts, key, show_progress=False)
            results: list[Any] = list(zip(vectors, count_tokens(self.encoder, texts)))
        elif key == ROUTE_KEY:
            kind = "route"
            results = list(self.router.route_batch(texts))
        else:
            raise ValueError(f"unknown batch key {key!r}")
        self.metrics.observe_batch(kind, len(texts), time.perf_counter() - started)
        return results

    async def route(self, body: RouteRequest) -> dict[str, Any]:
        single = isinstance(body.task, str)
        tasks = [body.task] if single else body.task
        check_texts(tasks, "task", single, self.settings)
        k = body.k if body.k is not None else min(DEFAULT_K, self.router.candidates)
        if k > self.router.candidates:
            raise RequestError(
                422, f"'k' is {k}, but this server ranks at most {self.router.candidates} candidates", param="k",
                code="invalid_value",
            )

        started = time.perf_counter()
        results = await self.runner.submit(ROUTE_KEY, tasks)
        self.metrics.observe_decisions("/v1/route", results, time.perf_counter() - started)
        payloads = [route_payload(result, k) for result in results]
        return payloads[0] if single else {"results": payloads}

    async def select(self, body: SelectRequest) -> dict[str, Any]:
        check_texts([body.task], "task", True, self.settings)
        tools = len(self.router.index.catalogue)
        k = body.k if body.k is not None else min(DEFAULT_K, tools)
        if k > tools:
            raise RequestError(
                422, f"'k' is {k}, but the catalogue has only {tools} tools", param="k", code="invalid_value"
            )

        # NOTE: selections are not batched, because Router has no batched
        # select; each runs on its own in the default thread pool.
        started = time.perf_counter()
        selection = await asyncio.to_thread(self.router.select, body.task, k)
        self.metrics.observe_decisions("/v1/select", [selection], time.perf_counter() - started)
        return selection_payload(selection)

    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        if body.model not in self.model_names:
            raise RequestError(
                404,
                f"model '{body.model}' is not served here; use '{self.encoder.name}'",
                param="model",
                code="model_not_found",
            )
        single = isinstance(body.input, str)
        texts = [body.input] if single else body.input
        check_texts(texts, "input", single, self.settings)
        tier = self._embedding_tier(body.layers, body.dimensions)

        started = time.perf_counter()
        rows = await self.runner.submit(tier, texts)
        seconds = time.perf_counter() - started
        for _ in rows:
            self.metrics.tier_seconds.labels("/v1/embeddings", tier.key).observe(seconds)

        tokens = sum(count for _, count in rows)
        data = [
            {"object": "embedding", "index": position, "embedding": format_vector(vector, body.encoding_format)}
            for position, (vector, _) in enumerate(rows)
        ]
        return {
            "object": "list",
            "data": data,
            "model": self.encoder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _embedding_tier(self, layers: int | None, dimensions: int | None) -> Tier:
        depth, width = self.encoder.depth, self.encoder.hidden_size
        if layers is not None and layers > depth:
            raise RequestError(
                422, f"'layers' is {layers}, but {self.encoder.name} has {depth} layers", param="layers",
                code="invalid_value",
            )
        if dimensions is not None and dimensions > width:
            raise RequestError(
                422,
                f"'dimensions' is {dimensions}, but {self.encoder.name} produces at most {width} dimensions",
                param="dimensions",
                code="invalid_value",
            )
        return Tier(layers or depth, dimensions or width)

    def models(self) -> dict[str, Any]:
        model = {"id": self.encoder.name, "object": "model", "created": self.created, "owned_by": "aegis-router"}
        return {"object": "list", "data": [model]}

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.encoder.name,
            "tools": len(self.router.index.catalogue),
            "fast_tier": self.router.fast_tier.to_dict(),
            "full_tier": self.router.full_tier.to_dict(),
            "batching": self.settings.batching,
        }


def _import_serve_extra() -> tuple[Any, Any, Any]:
    try:
        import fastapi
        import prometheus_client
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError(
            f"the HTTP service needs FastAPI, uvicorn and prometheus-client, and {exc.name} is not installed: "
            f"{SERVE_EXTRA}"
        ) from exc
    return fastapi, uvicorn, prometheus_client


def create_app(router: "Router", settings: ServiceSettings | None = None) -> Any:
    """Build the FastAPI app that serves ``router``; run it with uvicorn or any ASGI server.

    The batcher starts and stops with the app's lifespan: on shutdown it stops
    taking requests and runs every queued batch first. Raises
    :class:`~aegis_router.errors.MissingExtraError` when the ``serve`` extra
    is not installed.
    """
    fastapi, _, prometheus = _import_serve_extra()
    from contextlib import asynccontextmanager

    settings = settings or ServiceSettings()
    service = _Service(router, settings, prometheus)

    @asynccontextmanager
    async def lifespan(app: Any):
        service.runner.start()
        logger.info(
            "service ready: %d tools, model %s, %s",
            len(router.index.catalogue),
            service.encoder.name,
            f"batching up to {settings.max_batch_size} texts or {settings.max_wait_ms} ms"
            if settings.batching
            else "no batching",
        )
        try:
            yield
        finally:
            await service.runner.aclose()
            logger.info("service stopped after %d encoder calls", service.runner.batches)

    app = fastapi.FastAPI(title="aegis-router", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app, fastapi)
    _add_endpoints(app, fastapi, service)
    return app


def _add_endpoints(app: Any, fastapi: Any, service: _Service) -> None:
    Request = fastapi.Request
    JSONResponse = fastapi.responses.JSONResponse
    max_bytes = service.settings.max_body_bytes

    def json_body(model: type[Body]) -> dict[str, Any]:
        # The body is read by hand (for the size limit and the error format), so
        # its schema is declared here for the OpenAPI page.
        schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
        return {"requestBody": schema}

    @app.post("/v1/route", openapi_extra=json_body(RouteRequest))
    async def route(request: Request):
        body = await read_body(request, RouteRequest, max_bytes)
        return JSONResponse(await service.route(body))

    @app.post("/v1/select", openapi_extra=json_body(SelectRequest))
    async def select(request: Request):
        body = await read_body(request, SelectRequest, max_bytes)
        return JSONResponse(await service.select(body))

    @app.post("/v1/embeddings", openapi_extra=json_body(EmbeddingsRequest))
    async def embeddings(request: Request):
        body = await read_body(request, EmbeddingsRequest, max_bytes)
        return JSONResponse(await service.embeddings(body))

    @app.get("/v1/models")
    async def models():
        return JSONResponse(service.models())

    @app.get("/healthz")
    async def healthz():
        return JSONResponse(service.health())

    @app.get("/metrics")
    async def metrics():
        return fastapi.Response(service.metrics.render(), media_type=service.metrics.content_type)


def _add_error_handlers(app: Any, fastapi: Any) -> None:
    from starlette.exceptions import HTTPException

    JSONResponse = fastapi.responses.JSONResponse

    @app.exception_handler(RequestError)
    async def request_error(request: Any, exc: RequestError):
        logger.debug("%s %s rejected with %d: %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(BatcherClosedError)
    async def shutting_down(request: Any, exc: BatcherClosedError):
        logger.info("%s %s rejected with 503: the service is shutting down", request.method, request.url.path)
        error = RequestError(503, "the service is shutting down; retry on another instance", code="shutting_down")
        return JSONResponse(error.to_dict(), status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = f"{exc.detail}: {request.method} {request.url.path}"
        logger.debug("%s rejected with %d", message, exc.status_code)
        error = RequestError(exc.status_code, message, code=codes.get(exc.status_code, "http_error"))
        return JSONResponse(error.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(fastapi.exceptions.RequestValidationError)
    async def invalid_request(request: Any, exc: Any):
        # Only reachable through parameters FastAPI validates itself (none yet); bodies go through read_body.
        error = RequestError(422, f"invalid request: {exc.errors()[0]['msg']}", code="invalid_value")
        logger.debug("%s %s rejected with 422: %s", request.method, request.url.path, error.message)
        return JSONResponse(error.to_dict(), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Any, exc: Exception):
        # Starlette re-raises the exception after this response, and uvicorn logs its traceback.
        error = RequestError(500, "internal server error; the server log has the details", code="internal_error")
        return JSONResponse(error.to_dict(), status_code=500)


def serve(args: argparse.Namespace) -> int:
    """Serve the index named in ``args`` (the ``aegis-router serve`` options) until stopped; return the exit status.

    The port is bound before the model loads, so a busy port fails at once.
    On SIGINT or SIGTERM uvicorn stops accepting connections and waits for the
    requests in flight. Then the batcher runs what is still queued. A second
    Ctrl-C forces the exit. uvicorn raises the signal again when it is done,
    so Ctrl-C ends the command with status 130. Access log lines are written
    when the root logger is at INFO or lower (``aegis-router -v serve``).
    """
    _, uvicorn, _ = _import_serve_extra()
    settings = ServiceSettings.from_args(args)
    sock = _bind(args.host, args.port)
    try:
        router = _load_router(args.index, args.model)
        app = create_app(router, settings)
        config = uvicorn.Config(
            app,
            lifespan="on",
            ws="none",
            access_log=logging.getLogger().isEnabledFor(logging.INFO),
            timeout_graceful_shutdown=None,
        )
        server = uvicorn.Server(config)
        host, port = sock.getsockname()[:2]
        logger.info("serving %s on http://%s:%d", args.index, host, port)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    """Bind a listening address, warning when it is reachable from other machines."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, protocol)
    except OSError as exc:
        raise AegisRouterError(f"cannot listen on {host!r}: {exc}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AegisRouterError(
            f"cannot listen on {host} port {port}: {exc.strerror}; choose another --port or stop the program using it"
        ) from exc

    if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
        logger.warning(
            "listening on %s, which other machines can reach; the service has no authentication", address[0]
        )
    return sock


def _load_router(index_path: Path, model: str | None) -> "Router":
    from .encoder import Encoder
    from .index import Index
    from .router import Router

    index = Index.load(index_path)
    encoder = Encoder.from_pretrained(model or index.model.name)
    return Router(index, encoder, candidates=min(MAX_ROUTE_CANDIDATES, len(index.catalogue)))
