from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aegis_router import Catalogue, CatalogueError, Tool
from aegis_router.catalogue import load_tools, tool_hash, tool_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"

SEARCH_CODE = {
    "id": "search_code",
    "name": "search_code",
    "description": "Search the repository for a symbol or a phrase.",
    "examples": ["where is the config parser defined"],
    "tags": ["code"],
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "path": {"type": "string"}},
        "required": ["query"],
    },
}
SEND_EMAIL = {
    "id": "send_email",
    "name": "Send email",
    "description": "Send an email to one or more people.",
    "examples": ["mail the report to Ana"],
}
NATIVE_TOOLS = [SEARCH_CODE, SEND_EMAIL]

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "units": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "convert_currency", "description": "Convert an amount between currencies."},
    },
]

MCP_TOOLS = [
    {
        "name": "read_file",
        "title": "Read file",
        "description": "Read a text file from the workspace.",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": "list_dir",
        "description": "List the entries of a folder.",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
]


def write_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_native(folder: Path, name: str, tools: list[dict]) -> Path:
    """Write tools as a native catalogue in the format the file extension names."""
    suffix = Path(name).suffix
    if suffix == ".jsonl":
        text = "".join(json.dumps(tool) + "\n" for tool in tools)
    elif suffix == ".json":
        text = json.dumps(tools)
    else:
        text = yaml.safe_dump(tools)
    return write_file(folder, name, text)


def write_skill(folder: Path, name: str, front_matter: str, body: str = "# Steps\n\nDo the work.\n") -> Path:
    return write_file(folder, f"{name}/SKILL.md", f"---\n{front_matter}---\n{body}")


# Native catalogues


@pytest.mark.parametrize("name", ["tools.yaml", "tools.yml", "tools.json", "tools.jsonl"])
def test_native_file_loads(tmp_path, name):
    catalogue = Catalogue.load(write_native(tmp_path, name, NATIVE_TOOLS))

    assert catalogue.ids == ["search_code", "send_email"]
    tool = catalogue.get("search_code")
    assert tool.description == SEARCH_CODE["description"]
    assert tool.examples == ("where is the config parser defined",)
    assert tool.tags == ("code",)
    assert tool.parameters == SEARCH_CODE["parameters"]


def test_native_name_and_id_default(tmp_path):
    path = write_native(
        tmp_path,
        "tools.yaml",
        [{"id": "only_id", "description": "Has an id."}, {"name": "only_name", "description": "Has a name."}],
    )

    catalogue = Catalogue.load(path)

    assert catalogue.get("only_id").name == "only_id"
    assert catalogue.get("only_name").name == "only_name"


def test_native_forced_format(tmp_path):
    path = write_native(tmp_path, "tools.json", NATIVE_TOOLS)

    assert Catalogue.load(path, format="tools").ids == ["search_code", "send_email"]


def test_native_tools_key_mapping(tmp_path):
    # A native catalogue may wrap its list in a "tools" key; ids and examples must survive.
    path = write_file(tmp_path, "wrapped.json", json.dumps({"tools": NATIVE_TOOLS}))

    catalogue = Catalogue.load(path)

    assert catalogue.ids == ["search_code", "send_email"]
    assert catalogue.get("send_email").examples == ("mail the report to Ana",)


def test_example_catalogue_loads():
    catalogue = Catalogue.load(EXAMPLES / "tools.yaml", EXAMPLES / "skills")

    assert len(catalogue) == 52
    assert "deploy_rollback" in catalogue
    assert "meeting-summary" in catalogue


# OpenAI function-calling tools


def test_openai_array_loads(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "openai.json", json.dumps(OPENAI_TOOLS)))

    assert catalogue.ids == ["get_weather", "convert_currency"]
    weather = catalogue.get("get_weather")
    assert weather.name == "get_weather"
    assert weather.description == "Current weather for a city."
    assert list(weather.parameters["properties"]) == ["city", "units"]
    assert weather.metadata["format"] == "openai"


def test_openai_missing_parameters_default(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "openai.json", json.dumps(OPENAI_TOOLS)))

    assert catalogue.get("convert_currency").parameters == {"type": "object", "properties": {}}


def test_openai_tools_key_mapping(tmp_path):
    # The "tools" member of a chat completions request, saved as it is.
    path = write_file(tmp_path, "request.json", json.dumps({"tools": OPENAI_TOOLS}))

    assert Catalogue.load(path).ids == ["get_weather", "convert_currency"]


def test_openai_non_function_rejected(tmp_path):
    tools = [*OPENAI_TOOLS, {"type": "file_search", "function": {"name": "files", "description": "Search files."}}]
    path = write_file(tmp_path, "openai.json", json.dumps(tools))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path, format="openai")

    message = str(caught.value)
    assert str(path) in message
    assert "entry 2" in message
    assert "file_search" in message


# MCP tools/list results


def test_mcp_result_loads(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "mcp.json", json.dumps({"tools": MCP_TOOLS})))

    assert catalogue.ids == ["read_file", "list_dir"]
    tool = catalogue.get("read_file")
    assert tool.parameters == MCP_TOOLS[0]["inputSchema"]
    assert tool.metadata["format"] == "mcp"
    assert tool.metadata["title"] == "Read file"
    assert tool.metadata["annotations"] == {"readOnlyHint": True}


def test_mcp_jsonrpc_response_loads(tmp_path):
    response = {"jsonrpc": "2.0", "id": 7, "result": {"tools": MCP_TOOLS, "nextCursor": None}}

    catalogue = Catalogue.load(write_file(tmp_path, "mcp.json", json.dumps(response)))

    assert catalogue.ids == ["read_file", "list_dir"]


def test_mcp_bare_list_loads(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "mcp.json", json.dumps(MCP_TOOLS)))

    assert catalogue.get("list_dir").metadata["format"] == "mcp"


def test_mcp_yaml_loads(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "mcp.yaml", yaml.safe_dump({"tools": MCP_TOOLS})))

    assert catalogue.ids == ["read_file", "list_dir"]


# Agent Skills folders


def test_skills_folder_loads():
    catalogue = Catalogue.load(EXAMPLES / "skills")

    assert catalogue.ids == ["incident-postmortem", "job-posting", "meeting-summary", "pr-security-review", "release-notes"]
    tool = catalogue.get("meeting-summary")
    assert tool.description.startswith("Summarises a meeting transcript")
    assert tool.metadata["format"] == "skill"
    assert tool.metadata["source"] == str(EXAMPLES / "skills" / "meeting-summary" / "SKILL.md")


def test_single_skill_folder_loads():
    catalogue = Catalogue.load(EXAMPLES / "skills" / "release-notes")

    assert catalogue.ids == ["release-notes"]


def test_skill_file_loads():
    catalogue = Catalogue.load(EXAMPLES / "skills" / "job-posting" / "SKILL.md")

    assert catalogue.ids == ["job-posting"]


def test_skill_extra_front_matter_kept(tmp_path):
    write_skill(tmp_path, "tidy", "name: tidy-imports\ndescription: Sort and group imports.\nlicense: MIT\n")

    tool = Catalogue.load(tmp_path).get("tidy-imports")

    assert tool.metadata["license"] == "MIT"
    assert tool.description == "Sort and group imports."


# Errors name the file, the entry and the field


@pytest.mark.parametrize("name", ["tools.yaml", "tools.json", "tools.jsonl"])
def test_native_missing_description(tmp_path, name):
    path = write_native(tmp_path, name, [SEARCH_CODE, {"id": "send_email", "name": "Send email"}])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 1 ('send_email')" in message
    assert "'description'" in message
    assert "missing" in message


@pytest.mark.parametrize("name", ["tools.yaml", "tools.json", "tools.jsonl"])
def test_native_blank_description(tmp_path, name):
    path = write_native(tmp_path, name, [{**SEND_EMAIL, "description": "   "}])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 0 ('send_email')" in message
    assert "'description'" in message
    assert "empty" in message


def test_openai_missing_description(tmp_path):
    tools = [OPENAI_TOOLS[0], {"type": "function", "function": {"name": "convert_currency"}}]
    path = write_file(tmp_path, "openai.json", json.dumps(tools))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 1 ('convert_currency')" in message
    assert "'description'" in message


def test_mcp_blank_description(tmp_path):
    tools = [MCP_TOOLS[0], {**MCP_TOOLS[1], "description": ""}]
    path = write_file(tmp_path, "mcp.json", json.dumps({"tools": tools}))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 1 ('list_dir')" in message
    assert "'description'" in message


def test_native_unknown_field(tmp_path):
    path = write_native(tmp_path, "tools.yaml", [{**SEND_EMAIL, "exampels": ["mail Ana"]}])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "'exampels'" in message


def test_native_blank_example(tmp_path):
    path = write_native(tmp_path, "tools.yaml", [{**SEND_EMAIL, "examples": ["mail Ana", " "]}])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert "'examples'" in message
    assert "positions 1" in message


def test_native_entry_not_mapping(tmp_path):
    path = write_file(tmp_path, "tools.yaml", "- id: a\n  description: Tool a.\n- just a string\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 1" in message


def test_duplicate_id_within_file(tmp_path):
    path = write_native(tmp_path, "tools.yaml", [SEARCH_CODE, SEND_EMAIL, {**SEND_EMAIL, "name": "Send mail"}])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert "'send_email'" in message
    assert str(path) in message


def test_duplicate_id_within_mcp_file(tmp_path):
    path = write_file(tmp_path, "mcp.json", json.dumps({"tools": [*MCP_TOOLS, MCP_TOOLS[0]]}))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert "'read_file'" in message
    assert str(path) in message


def test_duplicate_id_across_files(tmp_path):
    first = write_native(tmp_path, "first.yaml", NATIVE_TOOLS)
    second = write_native(tmp_path, "second.yaml", [{"id": "read_page", "description": "Read a page."}, SEARCH_CODE])

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(first, second)

    message = str(caught.value)
    assert "'search_code'" in message
    assert str(second) in message
    assert "entry 1" in message


def test_duplicate_skill_across_folders(tmp_path):
    write_skill(tmp_path / "team", "notes", "name: meeting-summary\ndescription: Our own meeting notes.\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(EXAMPLES / "skills", tmp_path / "team")

    message = str(caught.value)
    assert "'meeting-summary'" in message
    assert str(tmp_path / "team" / "notes" / "SKILL.md") in message


def test_unknown_extension(tmp_path):
    path = write_file(tmp_path, "tools.txt", json.dumps(NATIVE_TOOLS))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "'.txt'" in message


def test_unknown_format_argument(tmp_path):
    path = write_native(tmp_path, "tools.json", NATIVE_TOOLS)

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path, format="xml")

    message = str(caught.value)
    assert "'xml'" in message
    assert "openai" in message


@pytest.mark.parametrize("content", ['{"functions": []}', "[]", '"a string"'])
def test_unknown_content(tmp_path, content):
    path = write_file(tmp_path, "tools.json", content)

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "unknown catalogue format" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [("tools.json", '[{"id": "a",'), ("tools.yaml", "- id: a\n  description: [unclosed\n")],
)
def test_unparsable_file(tmp_path, name, text):
    path = write_file(tmp_path, name, text)

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "could not be parsed" in message


def test_unparsable_jsonl_line(tmp_path):
    lines = [json.dumps(SEARCH_CODE), json.dumps(SEND_EMAIL), '{"id": "broken", description}']
    path = write_file(tmp_path, "tools.jsonl", "\n".join(lines) + "\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message


def test_missing_path(tmp_path):
    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path / "absent.yaml")

    assert "does not exist" in str(caught.value)


def test_no_paths():
    with pytest.raises(CatalogueError):
        Catalogue.load()


def test_empty_catalogue():
    with pytest.raises(CatalogueError):
        Catalogue([])


def test_skill_without_front_matter(tmp_path):
    path = write_file(tmp_path, "plain/SKILL.md", "# Plain skill\n\nname: plain\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    message = str(caught.value)
    assert str(path) in message
    assert "front matter" in message


def test_skill_front_matter_unclosed(tmp_path):
    path = write_file(tmp_path, "open/SKILL.md", "---\nname: open\ndescription: Never closed.\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    message = str(caught.value)
    assert str(path) in message
    assert "closing" in message


def test_skill_front_matter_not_mapping(tmp_path):
    path = write_skill(tmp_path, "listy", "- name\n- description\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    assert str(path) in str(caught.value)


def test_skill_without_name(tmp_path):
    path = write_skill(tmp_path, "nameless", "description: Tidy the imports of a module.\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    message = str(caught.value)
    assert str(path) in message
    assert "'name'" in message


def test_mcp_tool_without_name(tmp_path):
    tools = [MCP_TOOLS[0], {"description": "Unnamed tool.", "inputSchema": {"type": "object"}}]
    path = write_file(tmp_path, "mcp.json", json.dumps({"tools": tools}))

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "entry 1" in message
    assert "'name'" in message


def test_skill_without_description(tmp_path):
    path = write_skill(tmp_path, "terse", "name: terse\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    message = str(caught.value)
    assert str(path) in message
    assert "'description'" in message


def test_folder_without_skills(tmp_path):
    write_file(tmp_path, "notes/README.md", "not a skill\n")

    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(tmp_path)

    assert "no SKILL.md" in str(caught.value)


def test_folder_with_file_format():
    with pytest.raises(CatalogueError) as caught:
        load_tools(EXAMPLES / "skills", format="mcp")

    assert "'mcp'" in str(caught.value)


def test_file_with_skills_format(tmp_path):
    path = write_native(tmp_path, "tools.yaml", NATIVE_TOOLS)

    with pytest.raises(CatalogueError) as caught:
        load_tools(path, format="skills")

    assert str(path) in str(caught.value)


# tool_text and tool_hash


def test_tool_text_parts():
    text = tool_text(Tool(**SEARCH_CODE))

    assert text.startswith("search code: ")
    assert SEARCH_CODE["description"] in text
    assert text.endswith("Parameters: query, path.")


def test_tool_text_without_parameters():
    text = tool_text(Tool(id="ping", name="ping-host", description="Ping a host."))

    assert text == "ping host: Ping a host."


def test_tool_text_mcp_parameters(tmp_path):
    catalogue = Catalogue.load(write_file(tmp_path, "mcp.json", json.dumps({"tools": MCP_TOOLS})))

    assert tool_text(catalogue.get("read_file")).endswith("Parameters: path.")


def test_tool_hash_follows_embedded_text():
    tool = Tool(**SEARCH_CODE)

    assert tool_hash(tool) != tool_hash(tool.model_copy(update={"description": "Search the docs."}))
    assert tool_hash(tool) != tool_hash(tool.model_copy(update={"examples": ("find the parser",)}))
    assert tool_hash(tool) == tool_hash(tool.model_copy(update={"tags": ("other",), "metadata": {"owner": "x"}}))


# Catalogue


def test_catalogue_get_unknown():
    catalogue = Catalogue([Tool(**SEND_EMAIL)])

    with pytest.raises(KeyError, match="'nope'"):
        catalogue.get("nope")


def test_catalogue_rejects_non_tool():
    with pytest.raises(TypeError):
        Catalogue([Tool(**SEND_EMAIL), SEARCH_CODE])


def test_catalogue_json_round_trip(tmp_path):
    catalogue = Catalogue.load(
        write_native(tmp_path, "tools.yaml", NATIVE_TOOLS),
        write_file(tmp_path, "mcp.json", json.dumps({"tools": MCP_TOOLS})),
        EXAMPLES / "skills",
    )

    restored = Catalogue.from_json(catalogue.to_json())

    assert list(restored) == list(catalogue)
