"""Request bodies, their validation and the JSON payloads of the HTTP service."""

# No `from __future__ import annotations` here: FastAPI reads these models'
# annotations at runtime.

import argparse
import base64
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from .errors import AegisRouterError

if TYPE_CHECKING:
    from .encoder import Encoder
    from .router import RouteResult, Selection



@dataclass(frozen=True)
class ServiceSettings:
    """Limits and batching options of the service; the defaults are those of ``aegis-router serve``.

    ``max_batch_size`` is the most texts in one encoder call and ``max_wait_ms``
    how long the first queued request waits for others to join its batch.
    ``batching=False`` runs every request on its own. ``max_inputs`` is the most
    texts in one request, ``max_text_chars`` the longest text in characters,
    and ``max_body_bytes`` the largest request body in bytes.
    """

    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    batching: bool = True
    max_inputs: int = 256
    max_text_chars: int = 16_384
    max_body_bytes: int = 2_000_000

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_inputs", "max_text_chars", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and 0 <= self.max_wait_ms < math.inf):
            raise ValueError(f"max_wait_ms must be a finite number of 0 or more, got {self.max_wait_ms!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServiceSettings":
        """Read the settings from the parsed options of ``aegis-router serve``."""
        return cls(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            max_inputs=args.max_inputs,
            max_text_chars=args.max_text_chars,
            max_body_bytes=args.max_body_bytes,
        )


class RequestError(AegisRouterError):
    """A request the service rejects, with its HTTP status and the fields of an OpenAI error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        error_type = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": error_type, "param": self.param, "code": self.code}}


# Request bodies. Unknown fields are rejected so that a misspelt option fails
# loudly instead of being ignored.


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _is_token_ids(item: Any) -> bool:
    # OpenAI's API also takes one token-id array, or a list of them, as input.
    if isinstance(item, list):
        return all(_is_token_ids(part) for part in item)
    return isinstance(item, int) and not isinstance(item, bool)


def _text_or_texts(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError(
            "text_type", "must be a string or a list of strings, got {kind}", {"kind": _json_type(value)}
        )
    if value and all(_is_token_ids(item) for item in value):
        raise PydanticCustomError(
            "text_type",
            "must be a string or a list of strings; token-id arrays are not accepted, "
            "because the served model has its own tokenizer",
        )
    for position, item in enumerate(value):
        if isinstance(item, str):
            continue
        raise PydanticCustomError(
            "text_type",
            "item {position} is {kind}, but every item must be a string",
            {"position": position, "kind": _json_type(item)},
        )
    return value


TextOrTexts = Annotated[str | list[str], BeforeValidator(_text_or_texts)]
StrictText = Annotated[str, Field(strict=True)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteRequest(Body):
    """Body of ``POST /v1/route``."""

    task: TextOrTexts
    k: PositiveInt | None = None


class SelectRequest(Body):
    """Body of ``POST /v1/select``."""

    task: StrictText
    k: PositiveInt | None = None


class EmbeddingsRequest(Body):
    """Body of ``POST /v1/embeddings``: OpenAI's fields, plus ``layers``."""

    input: TextOrTexts
    model: StrictText
    dimensions: PositiveInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictText | None = None
    layers: PositiveInt | None = None


BodyT = TypeVar("BodyT", bound=Body)


def _param_name(location: tuple[int | str, ...]) -> str:
    name = ""
    for part in location:
        if isinstance(part, int):
            name += f"[{part}]"
        elif name:
            name += f".{part}"
        else:
            name = str(part)
    return name


def _invalid_body(exc: ValidationError, model: type[Body]) -> RequestError:
    """Turn pydantic's first error into a 422 that names the field."""
    # An unknown field is reported first: a misspelt name also makes the right one look missing.
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
    error = errors[0]
    param = _param_name(error["loc"])
    if error["type"] == "missing":
        return RequestError(422, f"missing required field '{param}'", param=param, code="missing_field")
    if error["type"] == "extra_forbidden":
        accepted = ", ".join(model.model_fields)
        return RequestError(
            422, f"unknown field '{param}'; accepted fields: {accepted}", param=param, code="unknown_field"
        )
    if error["type"] == "model_type":
        return RequestError(400, "request body must be a JSON object", code="invalid_body")
    return RequestError(422, f"invalid '{param}': {error['msg']}", param=param, code="invalid_value")


async def read_body(request: Any, model: type[BodyT], max_bytes: int) -> BodyT:
    """Read a JSON body of at most ``max_bytes`` bytes and validate it as ``model``."""
    too_large = RequestError(
        413, f"request body is larger than the limit of {max_bytes} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"invalid Content-Length header {declared!r}", code="invalid_body")
        if int(declared) > max_bytes:
            raise too_large

    # A chunked body has no Content-Length, so the limit is also checked while reading.
    from starlette.requests import ClientDisconnect

    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as exc:
        # The client is gone, so this response is never delivered. It keeps a traceback out of the log.
        message = "the client disconnected before sending the whole body"
        raise RequestError(400, message, code="client_disconnected") from exc

    try:
        data = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid_body(exc, model) from exc


def check_texts(texts: list[str], field: str, single: bool, settings: ServiceSettings) -> None:
    """Reject an empty list, too many texts, a text that is too long, or a blank text."""
    if not texts:
        message = f"'{field}' is an empty list; send at least one text"
        raise RequestError(422, message, param=field, code="invalid_value")
    if len(texts) > settings.max_inputs:
        raise RequestError(
            422,
            f"'{field}' has {len(texts)} texts, more than the limit of {settings.max_inputs} per request; "
            "send them in several requests",
            param=field,
            code="too_many_inputs",
        )
    for position, text in enumerate(texts):
        param = field if single else f"{field}[{position}]"
        if len(text) > settings.max_text_chars:
            raise RequestError(
                422,
                f"'{param}' is {len(text)} characters long, more than the limit of {settings.max_text_chars}",
                param=param,
                code="text_too_long",
            )
        if not text.strip():
            raise RequestError(422, f"'{param}' is empty or whitespace only", param=param, code="invalid_value")


def count_tokens(encoder: "Encoder", texts: list[str]) -> list[int]:
    # The tokens the model reads: special tokens included, cut at the model's limit
    # as the encoder truncates.
    return [min(len(encoding.ids), encoder.max_length) for encoding in encoder._tokenizer.encode_batch(texts)]


def format_vector(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector.tolist()


def _finite_or_none(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def route_payload(result: "RouteResult", k: int) -> dict[str, Any]:
    payload = result.to_dict()
    payload["candidates"] = payload["candidates"][:k]
    return payload


def selection_payload(selection: "Selection") -> dict[str, Any]:
    return {
        "task": selection.task,
        "tools": [candidate.to_dict() for candidate in selection.candidates],
        "margin": _finite_or_none(selection.margin),
        "tier": selection.tier.to_dict(),
        "escalated": selection.escalated,
        "ms": round(selection.ms, 3),
    }

