"""`files.replace_file`: the new content or the old, never a mix, and nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lvs_operator import files


def test_writes_creates_the_folder_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state" / "owned.json"
    files.replace_file(target, "one")
    assert target.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    inode = target.stat().st_ino
    files.replace_file(str(target), "two ✓")
    assert target.read_text(encoding="utf-8") == "two ✓"
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(os.listdir(target.parent)) == ["owned.json"]


def test_a_failed_rename_keeps_the_old_content_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "owned.json"
    target.write_text("old")

    def refuse(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        files.replace_file(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["owned.json"]


def test_temporaries_left_by_a_crash_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "owned.json"
    for n in range(3):
        (tmp_path / f".owned.json.crashed{n}.tmp").write_text("stale")
    files.replace_file(target, "fresh")
    assert target.read_text() == "fresh"
    assert len(os.listdir(tmp_path)) == 4  # the stale ones are not ours to remove


def test_a_file_in_the_working_directory_is_replaced_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    files.replace_file("owned.json", "here")
    assert (tmp_path / "owned.json").read_text() == "here"
    assert os.listdir(tmp_path) == ["owned.json"]
