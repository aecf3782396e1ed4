"""The tool catalogue: what the router chooses from, and the loaders for common formats.

Supported sources, detected from the file's content (or forced with ``format``):

- ``tools``: a JSON, JSONL or YAML list of tools with ``id``, ``name``,
  ``description`` and optional ``examples``, ``tags``, ``parameters``, ``metadata``;
- ``openai``: an OpenAI function-calling ``tools`` array
  (``{"type": "function", "function": {...}}`` items);
- ``mcp``: an MCP ``tools/list`` result (``{"tools": [...]}``, bare or inside a
  JSON-RPC response) whose tools have ``name``, ``description``, ``inputSchema``;
- ``skills``: an Agent Skills folder, one sub-folder per skill with a
  ``SKILL.md`` whose YAML front matter has ``name`` and ``description``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import CatalogueError

logger = logging.getLogger(__name__)

# The fields of an MCP tool definition (Model Context Protocol, tools/list).
MCP_TOOL_FIELDS = frozenset({"name", "title", "description", "inputSchema", "outputSchema", "annotations", "_meta"})

CatalogueFormat = Literal["auto", "tools", "openai", "mcp", "skills"]
CATALOGUE_FORMATS: tuple[str, ...] = ("auto", "tools", "openai", "mcp", "skills")


class Tool(BaseModel):
    """One tool or skill the router can choose."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique id; the router returns it.")
    name: str = Field(min_length=1)
    description: str = Field(min_length=1, description="What the tool does and when to use it; it is embedded.")
    examples: tuple[str, ...] = Field(default=(), description="Sample tasks that should route to this tool.")
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", "name", "description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty or whitespace only")
        return value

    @field_validator("examples")
    @classmethod
    def _examples_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        blank = [str(i) for i, text in enumerate(value) if not text.strip()]
        if blank:
            raise ValueError(f"examples at positions {', '.join(blank)} are empty")
        return tuple(text.strip() for text in value)


def tool_text(tool: Tool) -> str:
    """Return the text embedded for a tool's description entry.

    It is the tool's name (underscores and hyphens read as spaces, so
    ``search_code`` reads as words), its description, and the names of its
    parameters: ``"search code: Search the repository... Parameters: query, path."``.
    Examples are embedded separately, one entry each. Changing this function
    changes every tool's text hash, so indexes built before are re-embedded.
    """
    name = tool.name.replace("_", " ").replace("-", " ")
    text = f"{name}: {tool.description}"
    properties = tool.parameters.get("properties") if isinstance(tool.parameters, dict) else None
    if isinstance(properties, dict) and properties:
        text += f" Parameters: {', '.join(properties)}."
    return text


def tool_hash(tool: Tool) -> str:
    """Hash what is embedded for a tool, so an index rebuild re-embeds only changed tools."""
    payload = json.dumps([tool_text(tool), list(tool.examples)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class Catalogue(Sequence[Tool]):
    """An ordered set of tools with unique ids."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = tuple(tools)
        if not self._tools:
            raise CatalogueError("the catalogue is empty: give at least one tool")

        self._by_id: dict[str, Tool] = {}
        for position, tool in enumerate(self._tools):
            if not isinstance(tool, Tool):
                raise TypeError(f"catalogue entry {position} is a {type(tool).__name__}, expected a Tool")
            if tool.id in self._by_id:
                source = tool.metadata.get("source", "")
                where = f" (from {source})" if source else ""
                raise CatalogueError(f"duplicate tool id {tool.id!r} at entry {position}{where}: ids must be unique")
            self._by_id[tool.id] = tool

    @classmethod
    def load(cls, *paths: str | Path, format: CatalogueFormat = "auto") -> Catalogue:
        """Load and merge catalogue files and skill folders; ids must be unique across all of them."""
        if not paths:
            raise CatalogueError("no catalogue path given")
        tools: list[Tool] = []
        defined_in: dict[str, str] = {}
        for path in paths:
            for position, tool in enumerate(load_tools(path, format=format)):
                source = str(tool.metadata.get("source", path))
                if tool.id in defined_in:
                    raise CatalogueError(
                        f"{source}: entry {position}: duplicate tool id {tool.id!r}, already defined in "
                        f"{defined_in[tool.id]}; ids must be unique"
                    )
                defined_in[tool.id] = source
                tools.append(tool)
        return cls(tools)

    def __getitem__(self, position):
        return self._tools[position]

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools)

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [tool.id for tool in self._tools]

    def get(self, tool_id: str) -> Tool:
        """Return the tool with this id, or raise ``KeyError`` naming it."""
        try:
            return self._by_id[tool_id]
        except KeyError:
            raise KeyError(f"no tool with id {tool_id!r} in the catalogue") from None

    def to_json(self) -> str:
        return json.dumps([tool.model_dump(mode="json") for tool in self._tools], ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<catalogue>") -> Catalogue:
        return cls(_native_tools(json.loads(text), source))


def load_tools(path: str | Path, format: CatalogueFormat = "auto") -> list[Tool]:
    """Read the tools of one file or skills folder, detecting its format unless ``format`` is given."""
    if format not in CATALOGUE_FORMATS:
        raise CatalogueError(f"unknown catalogue format {format!r}; expected one of {', '.join(CATALOGUE_FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"catalogue path {str(path)!r} does not exist")

    if path.is_dir() or path.name == "SKILL.md":
        if format not in ("auto", "skills"):
            raise CatalogueError(f"{path} is a folder, which can only be read as an Agent Skills folder, not {format!r}")
        return _skill_tools(path)
    if format == "skills":
        raise CatalogueError(f"{path} is a file; the 'skills' format expects a folder of skill folders")

    data = _read_data(path)
    detected = _detect_format(data, path) if format == "auto" else format
    logger.debug("reading %s as %s", path, detected)
    if detected == "openai":
        return _openai_tools(data, str(path))
    if detected == "mcp":
        return _mcp_tools(data, str(path))
    return _native_tools(data, str(path))


def _read_data(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path, text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CatalogueError(f"{path} could not be parsed: {exc}") from exc
    raise CatalogueError(f"{path}: unknown file type {suffix or '(none)'!r}; use .json, .jsonl, .yaml or .yml")


def _read_jsonl(path: Path, text: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"{path}: line {number} could not be parsed: {exc.msg} (column {exc.colno})") from exc
    return rows


def _detect_format(data: Any, path: Path) -> str:
    items = _mcp_list(data)
    if items is not None:
        # A bare {"tools": [...]} mapping may also wrap a native or OpenAI list.
        # MCP tools always have an inputSchema, and a JSON-RPC response is always MCP.
        is_rpc_response = isinstance(data, dict) and "result" in data
        if is_rpc_response or not items or all(isinstance(item, dict) and "inputSchema" in item for item in items):
            return "mcp"
        data = items
    if not isinstance(data, list) or not data:
        raise CatalogueError(
            f"{path}: unknown catalogue format; expected a non-empty list of tools, an OpenAI tools array "
            "or an MCP tools/list result ({'tools': [...]})"
        )
    if all(isinstance(item, dict) and "function" in item and item.get("type", "function") == "function" for item in data):
        return "openai"
    if all(isinstance(item, dict) and "inputSchema" in item for item in data):
        return "mcp"
    return "tools"


def _mcp_list(data: Any) -> list | None:
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        return data["tools"]
    return None


def _native_tools(data: Any, source: str) -> list[Tool]:
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list):
        raise CatalogueError(f"{source}: expected a list of tools, got {type(data).__name__}")

    tools = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise CatalogueError(f"{source}: entry {position} is a {type(entry).__name__}, expected a mapping")
        fields = dict(entry)
        if "id" not in fields and "name" in fields:
            fields["id"] = fields["name"]
        if "name" not in fields and "id" in fields:
            fields["name"] = fields["id"]
        tools.append(_build_tool(fields, source, position))
    return tools


def _openai_tools(data: Any, source: str) -> list[Tool]:
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list):
        raise CatalogueError(f"{source}: expected an OpenAI tools array, got {type(data).__name__}")

    tools = []
    for position, entry in enumerate(data):
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict):
            raise CatalogueError(f"{source}: entry {position} has no 'function' object, as OpenAI tools must")
        if entry.get("type", "function") != "function":
            raise CatalogueError(f"{source}: entry {position} has type {entry.get('type')!r}; only 'function' tools can be routed")
        fields = {
            "id": function.get("name"),
            "name": function.get("name"),
            "description": function.get("description"),
            "parameters": function.get("parameters") or {"type": "object", "properties": {}},
            "metadata": {"source": source, "format": "openai"},
        }
        tools.append(_build_tool(fields, source, position))
    return tools


def _mcp_tools(data: Any, source: str) -> list[Tool]:
    items = _mcp_list(data)
    if items is None:
        items = data if isinstance(data, list) else None
    if items is None:
        raise CatalogueError(f"{source}: expected an MCP tools/list result with a 'tools' list")

    tools = []
    for position, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise CatalogueError(f"{source}: entry {position} is a {type(entry).__name__}, expected a mapping")
        unknown = sorted(set(entry) - MCP_TOOL_FIELDS)
        if unknown or "inputSchema" not in entry:
            problem = f"has fields MCP tools do not have ({', '.join(unknown)})" if unknown else "has no 'inputSchema'"
            raise CatalogueError(
                f"{source}: entry {position} {problem}; this does not look like an MCP tools/list result. "
                "Use --format auto or the format the file is in"
            )
        extra = {key: value for key, value in entry.items() if key in ("title", "annotations", "outputSchema")}
        fields = {
            "id": entry.get("name"),
            "name": entry.get("name"),
            "description": entry.get("description"),
            "parameters": entry.get("inputSchema") or {"type": "object", "properties": {}},
            "metadata": {"source": source, "format": "mcp", **extra},
        }
        tools.append(_build_tool(fields, source, position))
    return tools


def _skill_tools(path: Path) -> list[Tool]:
    if path.is_file():
        skill_files = [path]
    elif (path / "SKILL.md").is_file():
        skill_files = [path / "SKILL.md"]
    else:
        skill_files = sorted(path.glob("*/SKILL.md"))
    if not skill_files:
        raise CatalogueError(f"{path}: no SKILL.md found in it or in its sub-folders; an Agent Skills folder has one per skill")
    return [_skill_tool(skill_file, position) for position, skill_file in enumerate(skill_files)]


def _skill_tool(skill_file: Path, position: int) -> Tool:
    text = skill_file.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise CatalogueError(f"{skill_file}: SKILL.md must start with YAML front matter between '---' lines")
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        raise CatalogueError(f"{skill_file}: the front matter has no closing '---' line") from None

    try:
        front = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{skill_file}: the front matter is not valid YAML: {exc}") from exc
    if not isinstance(front, dict):
        raise CatalogueError(f"{skill_file}: the front matter must be a mapping with 'name' and 'description'")

    metadata = {key: value for key, value in front.items() if key not in ("name", "description")}
    metadata.update({"source": str(skill_file), "format": "skill"})
    fields = {
        "id": front.get("name"),
        "name": front.get("name"),
        "description": front.get("description"),
        "metadata": metadata,
    }
    return _build_tool(fields, str(skill_file), position)


def _build_tool(fields: dict[str, Any], source: str, position: int) -> Tool:
    label = fields.get("id") or fields.get("name")
    entry = f"entry {position}" + (f" ({label!r})" if isinstance(label, str) else "")
    for required in ("name", "id", "description"):
        if fields.get(required) is None:
            raise CatalogueError(f"{source}: {entry}: field {required!r} is missing")
    try:
        return Tool(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(part) for part in error['loc'])!r}: {error['msg'].removeprefix('Value error, ')}" for error in exc.errors()
        )
        raise CatalogueError(f"{source}: {entry}: {problems}") from None
