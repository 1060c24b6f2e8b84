"""llm.files: a file is replaced whole or not at all; a failed write leaves the old one and no temporary file."""

import json

import pytest

from llm.files import atomic_file, write_bytes, write_json, write_text


def test_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.json"
    write_text(path, "old")
    write_json(path, {"b": [1, 2]}, indent=2)
    assert json.loads(path.read_text()) == {"b": [1, 2]} and path.read_text().endswith("}\n")
    write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_intact_and_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("the old report\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(path) as f:
        f.write("half of the new rep")
        assert path.read_text() == "the old report\n"  # a reader meanwhile sees the old file
        raise RuntimeError("disk full")
    assert path.read_text() == "the old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"step": 1})
    with pytest.raises(TypeError):
        write_json(path, {"step": object()})
    assert json.loads(path.read_text()) == {"step": 1} and len(list(tmp_path.iterdir())) == 1
