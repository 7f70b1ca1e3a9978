"""station.files.write_durably: exact modes whatever the umask, all or nothing after a crash.

The crash is real: a child process is SIGKILLed at the instant it would rename the
temporary file over the target (its ``os.replace`` is swapped for a self-kill), so
whatever the write left on disk is exactly what a crash at that point leaves.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from station.files import FILE_MODE, write_durably
from tests.conftest import REPO

UMASKS = [0o000, 0o022, 0o077, 0o277]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=UMASKS, ids=lambda u: f"umask{u:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("file_mode", [0o600, 0o640, 0o644])
def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: int, file_mode: int) -> None:
    path = tmp_path / "f.json"
    write_durably(path, b"new", file_mode)
    assert path.read_bytes() == b"new" and mode(path) == file_mode
    # Replacing a file of another mode gives the new file exactly file_mode too.
    other = tmp_path / "g"
    other.write_bytes(b"old")
    other.chmod(0o666)
    write_durably(other, b"x" * 100_000, file_mode)
    assert other.read_bytes() == b"x" * 100_000 and mode(other) == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "g"]  # no temporary left


def test_a_stale_temporary_or_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_bytes(b"old")
    stale = tmp_path / ".pool.json.tmp"
    stale.write_bytes(b"half-written by a crash")
    stale.chmod(0o666)
    write_durably(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and mode(path) == 0o600 and not stale.exists()
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    stale.symlink_to(victim)
    write_durably(path, b"newer", 0o600)
    assert victim.read_bytes() == b"untouched" and path.read_bytes() == b"newer"
    assert not path.is_symlink() and not stale.exists()


def _crash_before_rename(path: Path, data: bytes, file_mode: int) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import station.files as files
        def crash(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        files.os.replace = crash
        files.write_durably({str(path)!r}, {data!r}, {file_mode})
        print("not reached")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    write_durably(path, b'{"chunk": 1}', 0o600)
    proc = _crash_before_rename(path, b'{"chunk": 2}', 0o600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout
    assert path.read_bytes() == b'{"chunk": 1}' and mode(path) == 0o600
    tmp = tmp_path / ".progress.json.tmp"
    assert tmp.read_bytes() == b'{"chunk": 2}' and mode(tmp) == 0o600  # complete, still private
    write_durably(path, b'{"chunk": 3}', 0o600)  # the next write cleans up
    assert path.read_bytes() == b'{"chunk": 3}' and sorted(tmp_path.iterdir()) == [path]


def test_a_crash_before_the_first_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.json"
    proc = _crash_before_rename(path, b"{}", FILE_MODE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not path.exists()


def test_an_error_before_the_rename_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_durably(path, "not bytes", 0o600)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(FileNotFoundError):
        write_durably(tmp_path / "missing-dir" / "a.json", b"x", 0o600)


# -- the three call sites keep their modes ----------------------------------------------
def test_the_sidecar_writer(tmp_path: Path, umask: int) -> None:
    from station.events.passfile import write_json_atomic

    path = tmp_path / "pass.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1} and mode(path) == FILE_MODE


def test_the_distiller_checkpoint(tmp_path: Path, umask: int) -> None:
    from postprocessing.ground.distiller import Checkpoint

    checkpoint = Checkpoint(tmp_path / "work" / "pass-1")
    bits = np.arange(10, dtype=np.uint8) & 1
    checkpoint.save_array("corrected", bits)
    checkpoint.save_array("corrected", bits ^ 1)  # replaced whole
    np.testing.assert_array_equal(checkpoint.load_array("corrected"), bits ^ 1)
    assert [p.name for p in checkpoint.dir.iterdir()] == ["corrected.npy"]
    assert mode(checkpoint.dir / "corrected.npy") == 0o600


def test_the_auth_pool(tmp_path: Path, umask: int) -> None:
    from postprocessing.auth.pool import Direction, KeyPool

    path = tmp_path / "pool.json"
    rng = np.random.default_rng(1)
    with KeyPool.create(path, rng.integers(0, 2, 4096, dtype=np.uint8)) as pool:
        assert mode(path) == 0o600
        pool.take_pad(Direction.GROUND_TO_SATELLITE, 0)  # a consumption rewrites the file
        assert mode(path) == 0o600
    with KeyPool(path) as pool:
        assert pool.next_counter(Direction.GROUND_TO_SATELLITE) == 1
    assert not (tmp_path / ".pool.json.tmp").exists()
