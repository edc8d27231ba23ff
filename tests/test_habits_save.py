"""Issue 17 (1): saving writes only its own files, each atomically, and never deletes a folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import peftatlas as pa
import peftatlas.core.atomic as atomic
from peftatlas.interop.peft_format import export_peft
from peftatlas.testing import tiny_model


def _model(r: int = 2):
    return pa.attach(tiny_model("bert").model, "lora", targets=["query", "value"], r=r)


def _busy_folder(root: Path) -> Path:
    """A Trainer-like output_dir: a checkpoint folder, a tokenizer file and a nested subfolder."""
    out = root / "out"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "model.safetensors").write_bytes(b"\x00weights\x01")
    (out / "tokenizer.json").write_text('{"vocab": {}}')
    (out / "logs" / "run-1").mkdir(parents=True)
    (out / "logs" / "run-1" / "events.txt").write_text("step 1\n")
    return out


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _strays(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if atomic.TEMP_MARK in p.name or ".old-" in p.name]


@pytest.mark.parametrize("writer", ["save_adapter", "export_peft"])
def test_save_keeps_every_other_file_byte_for_byte(tmp_path, writer):
    out = _busy_folder(tmp_path)
    before = _snapshot(out)
    model = _model()
    (pa.save_adapter if writer == "save_adapter" else export_peft)(model, out)
    after = _snapshot(out)
    for k, v in before.items():
        assert after.get(k) == v, f"{k} changed or vanished"
    new = sorted(set(after) - set(before))
    assert new == (["adapter.json", "adapter.safetensors"] if writer == "save_adapter"
                   else ["adapter_config.json", "adapter_model.safetensors"])
    assert _strays(tmp_path) == []


def test_interrupted_save_between_files_changes_nothing(tmp_path, monkeypatch):
    out = _busy_folder(tmp_path)
    pa.save_adapter(_model(r=2), out)
    before = _snapshot(out)
    calls = []
    real = atomic.write_temp

    def second_write_fails(folder, name, content):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(folder, name, content)

    monkeypatch.setattr(atomic, "write_temp", second_write_fails)
    with pytest.raises(KeyboardInterrupt):
        pa.save_adapter(_model(r=4), out)
    assert len(calls) == 2
    assert _snapshot(out) == before  # the old adapter pair and everything else, byte for byte
    assert _strays(tmp_path) == []
    monkeypatch.undo()
    assert pa.load_adapter(tiny_model("bert").model, out).specs["default"].config.r == 2


def test_interrupted_save_into_new_folder_leaves_nothing(tmp_path, monkeypatch):
    def fails(folder, name, content):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "write_temp", fails)
    with pytest.raises(OSError, match="disk full"):
        pa.save_adapter(_model(), tmp_path / "new" / "adapter")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["save_adapter", "export_peft"])
def test_destination_that_is_a_file_is_refused(tmp_path, writer):
    target = tmp_path / "adapter"
    target.write_bytes(b"precious")
    with pytest.raises(ValueError, match="is an existing file, not a folder") as e:
        (pa.save_adapter if writer == "save_adapter" else export_peft)(_model(), target)
    assert "\n" not in str(e.value)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_saved_folders_and_files_get_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = pa.save_adapter(_model(), tmp_path / "a" / "b")
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", path):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_write_file_replaces_one_file_atomically(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    atomic.write_file(tmp_path / "result.json", b"{}")
    atomic.write_file(tmp_path / "result.json", b"[1]")
    assert (tmp_path / "result.json").read_bytes() == b"[1]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "result.json"]
