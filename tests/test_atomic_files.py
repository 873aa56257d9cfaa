"""The one atomic-write helper: whole old file or whole new file, whatever happens mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vggt_core.atomic_files import atomic_directory, atomic_path, atomic_write_bytes, atomic_writer


def test_a_write_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash in the middle")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary left
    atomic_write_bytes(target, b"new", durable=False)
    assert target.read_bytes() == b"new"


def test_atomic_path_keeps_the_suffix_and_can_write_nothing(tmp_path):
    target = tmp_path / "scene.glb"
    with atomic_path(target) as temporary:
        assert temporary.suffix == ".glb" and temporary.parent == tmp_path
        temporary.write_bytes(b"glb")
    with atomic_path(target, optional=True):
        pass  # nothing written: the file stays
    assert target.read_bytes() == b"glb"


def test_a_folder_is_replaced_as_a_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as folder:
        (folder / "a.bin").write_bytes(b"1")
        (folder / "stale.bin").write_bytes(b"x")
    with atomic_directory(target) as folder:
        (folder / "a.bin").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"] and (target / "a.bin").read_bytes() == b"2"
    with pytest.raises(OSError):
        with atomic_directory(target) as folder:
            (folder / "a.bin").write_bytes(b"3")
            raise OSError(28, "No space left on device")
    assert (target / "a.bin").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_kill_9_during_writes_leaves_a_whole_file(tmp_path):
    target = tmp_path / "big.bin"
    size = 8 * 1024 * 1024
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from vggt_core.atomic_files import atomic_writer
        round = 0
        while True:
            with atomic_writer({str(target)!r}) as handle:
                for _ in range(8):
                    handle.write(bytes([65 + round % 26]) * ({size} // 8))
            round += 1
            print(round, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline()  # at least one whole file exists
        time.sleep(0.3)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    data = target.read_bytes()
    assert len(data) == size and data == data[:1] * size
