"""Files 0640 and directories 0750 whatever the umask (issue 11 §6).

Raw detection data used to be world-readable outside systemd (0644 files, 0755 dirs under
an umask of 022). Checked at the shared helper and at each creation site: the passes
directory, a recorded pass file and its sidecar, the state file, `tle update`'s file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from station.config.events import EventsConfig
from station.daemon.statefile import StateFile, StationState
from station.events import EventPipeline
from station.files import DIR_MODE, FILE_MODE, make_dirs, open_file, open_new
from tests.events.conftest import header, make_batches

UMASKS = [0o000, 0o022, 0o077]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=UMASKS, ids=lambda u: f"umask{u:03o}")
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_the_helper_sets_exact_modes(tmp_path: Path, umask: int) -> None:
    top = tmp_path / "a"
    make_dirs(top / "b" / "c")
    for d in (top, top / "b", top / "b" / "c"):
        assert mode(d) == DIR_MODE == 0o750, (d, oct(mode(d)))
    fd = open_file(top / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.close(fd)
    assert mode(top / "f") == FILE_MODE == 0o640
    fd, name = open_new(top, prefix=".x.")
    os.close(fd)
    assert mode(Path(name)) == 0o640


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(NotADirectoryError) as info:
        make_dirs(tmp_path / "state" / "passes")
    assert str(info.value) == f"[Errno 20] exists and is not a directory: '{tmp_path / 'state'}'"


def test_existing_directories_keep_their_mode(tmp_path: Path, umask: int) -> None:
    tmp_path.chmod(0o755)
    make_dirs(tmp_path / "new")
    assert mode(tmp_path) == 0o755 and mode(tmp_path / "new") == 0o750


async def test_pass_file_sidecar_and_passes_dir(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "state"
    pipeline = EventPipeline(EventsConfig(stream_endpoint="tcp://127.0.0.1:*"), state_dir=state)
    await pipeline.start()
    try:
        rec = pipeline.open_pass(header())
        for b in make_batches(3, seed=1, max_events=500):
            await rec.push(b)
        await rec.close("completed")
    finally:
        await pipeline.stop()
    passes = state / "passes"
    files = sorted(passes.iterdir())
    assert {p.suffix for p in files} == {".arrows", ".json"}, files
    assert mode(state) == 0o750 and mode(passes) == 0o750
    for path in files:
        assert mode(path) == 0o640, (path, oct(mode(path)))


def test_state_file(tmp_path: Path, umask: int) -> None:
    sf = StateFile(tmp_path / "var" / "state")
    sf.save(StationState(updated=datetime(2016, 12, 19, tzinfo=UTC)))
    assert mode(sf.path) == 0o640
    assert mode(sf.path.parent) == 0o750 and mode(sf.path.parent.parent) == 0o750


def test_tle_update_installs_a_readable_element_file(tmp_path: Path, umask: int) -> None:
    # Element files are public data: 0644 like a packaged file, whatever the umask.
    from station.orbit.update import install_elements

    tle = (Path(__file__).resolve().parents[1] / "config" / "elements" / "micius-2016-12-18.tle")
    result = install_elements(tle.read_bytes(), tmp_path / "micius.tle")
    assert mode(result.path) == 0o644
