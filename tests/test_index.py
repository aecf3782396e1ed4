from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import aegis_router.index
from aegis_router import Encoder, Index, IndexFormatError, IndexMismatchError, Router, Thresholds, Tier
from aegis_router.building import build_index
from aegis_router.catalogue import tool_text
from aegis_router.index import CATALOGUE, MANIFEST, VECTORS
from tiny_models import build_tiny_model

# Descriptions use the tiny models' word-level vocabulary, so every word has its own token.
TOOLS = [
    {
        "id": "logs",
        "name": "read logs",
        "description": "show the logs of the service",
        "examples": ["show the error logs", "read the logs of the build today"],
    },
    {"id": "email", "name": "send email", "description": "send an email to the user", "examples": ["send the report to the team"]},
    {"id": "ticket", "name": "create ticket", "description": "create a ticket for the bug"},
    {
        "id": "weather",
        "name": "check weather",
        "description": "show the weather for tomorrow morning",
        "examples": ["check the weather today"],
    },
]


class EncodeSpy:
    """Record every text passed to ``Encoder.encode_tiers`` and call the real method."""

    def __init__(self, encoder: Encoder) -> None:
        self.texts: list[str] = []
        self._encode_tiers = encoder.encode_tiers

    def __call__(self, texts, tiers, **options):
        self.texts.extend(texts)
        return self._encode_tiers(texts, tiers, **options)


@pytest.fixture(scope="module")
def encoder(tiny_bert_path) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_path)


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bert_seed1"), "bert", seed=1)


@pytest.fixture(scope="module")
def other_encoder(other_model_path) -> Encoder:
    return Encoder.from_pretrained(other_model_path)


def write_tools(path: Path, tools: list[dict]) -> Path:
    path.write_text(yaml.safe_dump(tools), encoding="utf-8")
    return path


def tool_rows(index: Index, tool_id: str) -> slice:
    position = index.catalogue.ids.index(tool_id)
    starts = list(index.entry_starts) + [index.entry_count]
    return slice(int(starts[position]), int(starts[position + 1]))


def spy_on(monkeypatch, encoder: Encoder) -> EncodeSpy:
    spy = EncodeSpy(encoder)
    monkeypatch.setattr(encoder, "encode_tiers", spy)
    return spy


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def saved_index(tmp_path, encoder) -> tuple[Index, Path]:
    index = build_index([write_tools(tmp_path / "tools.yaml", TOOLS)], tmp_path / "idx", model=encoder)
    return index, tmp_path / "idx"


# Save and load


def test_build_layout(saved_index):
    index, _ = saved_index

    assert index.catalogue.ids == ["logs", "email", "ticket", "weather"]
    assert index.entry_count == 8
    assert index.entry_starts.tolist() == [0, 3, 5, 6]
    assert index.fast_tier == Tier(1, 32)
    assert index.full_tier == Tier(3, 32)


def test_build_rows_match_encoder(saved_index, encoder):
    index, _ = saved_index
    description = tool_text(index.catalogue.get("ticket"))

    expected = encoder.encode([description], index.full_tier, prompt_name=None)

    np.testing.assert_allclose(index.matrix(index.full_tier)[tool_rows(index, "ticket")], expected, atol=1e-5)


def test_save_writes_three_files(saved_index):
    _, path = saved_index

    assert sorted(item.name for item in path.iterdir()) == sorted([MANIFEST, VECTORS, CATALOGUE])


def test_load_round_trip(saved_index):
    index, path = saved_index

    loaded = Index.load(path)

    assert loaded.vectors.keys() == index.vectors.keys()
    for key, matrix in index.vectors.items():
        assert np.array_equal(loaded.vectors[key], matrix), key
    assert list(loaded.catalogue) == list(index.catalogue)
    assert loaded.thresholds == index.thresholds
    assert loaded.tiers == index.tiers
    assert loaded.model == index.model
    assert loaded.tool_hashes == index.tool_hashes
    assert np.array_equal(loaded.entry_starts, index.entry_starts)


def test_load_calibrated_thresholds(saved_index):
    index, path = saved_index
    thresholds = Thresholds(
        margin=0.07, min_score=0.31, fast_min_score=0.4, source="calibration", calibration={"tasks": 120, "accuracy": 0.9}
    )
    index.with_thresholds(thresholds).save(path)

    assert Index.load(path).thresholds == thresholds


def test_load_other_model(saved_index, other_encoder, tiny_bert_path, other_model_path):
    _, path = saved_index

    with pytest.raises(IndexMismatchError) as caught:
        Router(Index.load(path), other_encoder)

    message = str(caught.value)
    assert str(tiny_bert_path) in message
    assert str(other_model_path) in message


def test_load_same_model_copy(saved_index, tiny_bert_path, tmp_path):
    # The fingerprint hashes the weights, not the folder name, so a copied model still fits.
    _, path = saved_index
    copy = shutil.copytree(tiny_bert_path, tmp_path / "copied_model")

    router = Router(Index.load(path), Encoder.from_pretrained(copy))

    assert router.route("show the logs").tool is not None


@pytest.mark.parametrize("name", [VECTORS, CATALOGUE])
def test_load_edited_file(saved_index, name):
    _, path = saved_index
    data = bytearray((path / name).read_bytes())
    data[-2] ^= 0x01
    (path / name).write_bytes(bytes(data))

    with pytest.raises(IndexFormatError) as caught:
        Index.load(path)

    assert str(path / name) in str(caught.value)


def test_load_missing_vectors(saved_index):
    _, path = saved_index
    (path / VECTORS).unlink()

    with pytest.raises(IndexFormatError) as caught:
        Index.load(path)

    assert "missing" in str(caught.value)


def test_load_not_an_index(tmp_path):
    with pytest.raises(IndexFormatError) as caught:
        Index.load(tmp_path)

    assert MANIFEST in str(caught.value)


# Atomic save


def test_failed_write_keeps_previous(saved_index, monkeypatch):
    index, path = saved_index
    before = folder_bytes(path)

    def fail_write(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr("safetensors.numpy.save_file", fail_write)
    with pytest.raises(OSError):
        index.with_thresholds(Thresholds(margin=0.5)).save(path)

    assert folder_bytes(path) == before
    assert Index.load(path).thresholds == index.thresholds
    assert sorted(item.name for item in path.parent.iterdir()) == ["idx", "tools.yaml"]


def test_failed_swap_keeps_previous(saved_index, monkeypatch):
    index, path = saved_index
    before = folder_bytes(path)

    def fail_swap(staging, target):
        raise OSError("rename failed")

    monkeypatch.setattr(aegis_router.index, "_swap_in", fail_swap)
    with pytest.raises(OSError):
        index.with_thresholds(Thresholds(margin=0.5)).save(path)

    assert folder_bytes(path) == before
    assert sorted(item.name for item in path.parent.iterdir()) == ["idx", "tools.yaml"]


def test_failed_second_rename_keeps_previous(saved_index, monkeypatch):
    # The swap moves the old index aside, then renames the new one into place.
    # If that second rename raises, the old index must be back at its path.
    index, path = saved_index
    before = folder_bytes(path)
    real_replace = os.replace
    calls = []

    def replace_then_fail(source, target):
        calls.append((source, target))
        if len(calls) == 2:
            raise OSError("rename failed")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        index.with_thresholds(Thresholds(margin=0.5)).save(path)
    monkeypatch.undo()

    assert len(calls) >= 2
    assert path.is_dir()
    assert folder_bytes(path) == before
    assert sorted(item.name for item in path.parent.iterdir()) == ["idx", "tools.yaml"]


def test_save_replaces_index(saved_index):
    index, path = saved_index
    thresholds = Thresholds(margin=0.5)

    index.with_thresholds(thresholds).save(path)

    assert Index.load(path).thresholds == thresholds
    assert sorted(item.name for item in path.parent.iterdir()) == ["idx", "tools.yaml"]


def test_save_refuses_other_folder(saved_index, tmp_path):
    index, _ = saved_index
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me", encoding="utf-8")

    with pytest.raises(IndexFormatError):
        index.save(folder)

    assert (folder / "todo.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(item.name for item in folder.iterdir()) == ["todo.txt"]


def test_save_refuses_file(saved_index, tmp_path):
    index, _ = saved_index
    file = tmp_path / "index.txt"
    file.write_text("keep me", encoding="utf-8")

    with pytest.raises(IndexFormatError):
        index.save(file)

    assert file.read_text(encoding="utf-8") == "keep me"


def test_save_creates_parents(saved_index, tmp_path):
    index, _ = saved_index

    index.save(tmp_path / "nested" / "deeper" / "idx")

    assert Index.load(tmp_path / "nested" / "deeper" / "idx").catalogue.ids == index.catalogue.ids


# Incremental rebuild


def test_rebuild_changed_tool_only(saved_index, encoder, monkeypatch):
    before, path = saved_index
    tools = [dict(tool) for tool in TOOLS]
    tools[0]["description"] = "read the logs of the deploy service"
    catalogue_file = write_tools(path.parent / "tools.yaml", tools)
    spy = spy_on(monkeypatch, encoder)

    after = build_index([catalogue_file], path, model=encoder)

    changed = after.catalogue.get("logs")
    assert spy.texts == [tool_text(changed), *changed.examples]
    for tool_id in ("email", "ticket", "weather"):
        for key in before.vectors:
            old = before.vectors[key][tool_rows(before, tool_id)]
            new = after.vectors[key][tool_rows(after, tool_id)]
            assert np.array_equal(old, new), (tool_id, key)


def test_rebuild_changed_tool_vectors(saved_index, encoder):
    before, path = saved_index
    tools = [dict(tool) for tool in TOOLS]
    tools[0]["description"] = "read the logs of the deploy service"

    after = build_index([write_tools(path.parent / "tools.yaml", tools)], path, model=encoder)

    full = before.full_tier.key
    rows = tool_rows(after, "logs")
    description_row, example_rows = rows.start, slice(rows.start + 1, rows.stop)
    assert not np.allclose(before.vectors[full][description_row], after.vectors[full][description_row], atol=1e-3)
    np.testing.assert_allclose(before.vectors[full][example_rows], after.vectors[full][example_rows], atol=1e-5)


def test_rebuild_equals_fresh_build(saved_index, encoder, tmp_path):
    _, path = saved_index
    tools = [dict(tool) for tool in TOOLS]
    tools[2]["description"] = "create a ticket for the error in the release"
    catalogue_file = write_tools(tmp_path / "tools.yaml", tools)

    rebuilt = build_index([catalogue_file], path, model=encoder)
    fresh = build_index([catalogue_file], tmp_path / "fresh", model=encoder)

    for key in fresh.vectors:
        np.testing.assert_allclose(rebuilt.vectors[key], fresh.vectors[key], atol=1e-5, err_msg=key)


def test_rebuild_unchanged_embeds_nothing(saved_index, encoder, monkeypatch):
    _, path = saved_index
    spy = spy_on(monkeypatch, encoder)

    build_index([path.parent / "tools.yaml"], path, model=encoder)

    assert spy.texts == []


def test_rebuild_reordered_tools(saved_index, encoder, monkeypatch):
    before, path = saved_index
    catalogue_file = write_tools(path.parent / "tools.yaml", list(reversed(TOOLS)))
    spy = spy_on(monkeypatch, encoder)

    after = build_index([catalogue_file], path, model=encoder)

    assert spy.texts == []
    assert after.catalogue.ids == ["weather", "ticket", "email", "logs"]
    for tool_id in after.catalogue.ids:
        for key in before.vectors:
            old = before.vectors[key][tool_rows(before, tool_id)]
            new = after.vectors[key][tool_rows(after, tool_id)]
            assert np.array_equal(old, new), (tool_id, key)


def test_rebuild_added_tool(saved_index, encoder, monkeypatch):
    _, path = saved_index
    added = {"id": "pdf", "name": "read pdf", "description": "read the text of a pdf file", "examples": ["open the pdf"]}
    catalogue_file = write_tools(path.parent / "tools.yaml", [*TOOLS, added])
    spy = spy_on(monkeypatch, encoder)

    after = build_index([catalogue_file], path, model=encoder)

    assert spy.texts == [tool_text(after.catalogue.get("pdf")), "open the pdf"]
    assert Index.load(path).catalogue.ids == ["logs", "email", "ticket", "weather", "pdf"]


def test_rebuild_other_model_embeds_all(saved_index, other_encoder, monkeypatch):
    before, path = saved_index
    spy = spy_on(monkeypatch, other_encoder)

    after = build_index([path.parent / "tools.yaml"], path, model=other_encoder)

    assert len(spy.texts) == before.entry_count
    assert after.model.fingerprint == other_encoder.fingerprint
    assert Index.load(path).model.fingerprint == other_encoder.fingerprint


def test_rebuild_without_reuse_embeds_all(saved_index, encoder, monkeypatch):
    before, path = saved_index
    spy = spy_on(monkeypatch, encoder)

    build_index([path.parent / "tools.yaml"], path, model=encoder, reuse=False)

    assert len(spy.texts) == before.entry_count


def test_rebuild_other_tier_embeds_all(saved_index, encoder, monkeypatch):
    before, _ = saved_index
    spy = spy_on(monkeypatch, encoder)

    after = Index.build(
        before.catalogue, encoder, fast_tier=Tier(2, 16), thresholds=before.thresholds, previous=before
    )

    assert len(spy.texts) == before.entry_count
    assert after.fast_tier == Tier(2, 16)


def test_rebuild_keeps_calibration(saved_index, encoder):
    index, path = saved_index
    calibrated = Thresholds(margin=0.07, min_score=0.31, source="calibration", calibration={"tasks": 40})
    index.with_thresholds(calibrated).save(path)
    tools = [dict(tool) for tool in TOOLS]
    tools[1]["description"] = "send an email to the team"

    rebuilt = build_index([write_tools(path.parent / "tools.yaml", tools)], path, model=encoder)

    assert rebuilt.thresholds == calibrated


def test_rebuild_over_damaged_index(saved_index, encoder, monkeypatch):
    before, path = saved_index
    (path / VECTORS).write_bytes(b"damaged")
    spy = spy_on(monkeypatch, encoder)

    build_index([path.parent / "tools.yaml"], path, model=encoder)

    assert len(spy.texts) == before.entry_count
    assert Index.load(path).entry_count == before.entry_count


def test_index_catalogue_standalone(saved_index):
    # Routing needs only the index folder, so the catalogue file may be deleted after indexing.
    _, path = saved_index
    (path.parent / "tools.yaml").unlink()

    assert Index.load(path).catalogue.get("ticket").description == "create a ticket for the bug"


def test_matrix_unknown_tier(saved_index):
    index, _ = saved_index

    with pytest.raises(IndexFormatError):
        index.matrix(Tier(2, 8))
