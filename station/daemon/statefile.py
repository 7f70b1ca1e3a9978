"""A small JSON file in the state directory that says where the station was, and the one
record of mode and phase it holds.

:class:`ModeRecord` is that record in the daemon: every change of mode or phase goes
through it and is saved at once, atomically (temporary file, fsync, rename), so after a
crash or power cut the daemon knows whether a pass was in progress and which file it
wrote. Everything else (the ``state`` message, the supervisor's ``mode`` and ``phase``)
is derived from it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from station.daemon.alarms import Severity
from station.daemon.modes import Mode, Phase
from station.daemon.record import SegmentState
from station.events.passfile import reserve_space
from station.files import make_dirs, open_file

if TYPE_CHECKING:
    from station.clock import Clock
    from station.daemon.alarms import AlarmBook
    from station.orbit.passes import PassInfo

log = logging.getLogger(__name__)


class PassState(BaseModel):
    """The pass in progress, as far as recovery needs to know."""

    model_config = ConfigDict(extra="forbid")

    pass_id: str
    norad_id: int
    segment: int = 1
    aos: AwareDatetime
    los: AwareDatetime
    qkd_start: AwareDatetime
    qkd_end: AwareDatetime
    pass_file: str | None = None
    phase_times: dict[str, AwareDatetime] = Field(default_factory=dict)
    #: The earlier segments of this pass (after a resume), for the whole-pass summary.
    earlier_segments: list[SegmentState] = Field(default_factory=list)


class StationState(BaseModel):
    """Contents of ``state_dir/state.json``."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    mode: Mode = Mode.AUTO
    phase: Phase = Phase.IDLE
    updated: AwareDatetime
    current_pass: PassState | None = None
    #: Set when the daemon stops cleanly; absent after a crash.
    clean_shutdown: bool = False


#: Space held next to the state file so that it can still be written on a full disk.
RESERVE_BYTES = 256 * 1024


class StateFile:
    """Load and atomically save :class:`StationState`.

    A reserve file (``.state.reserve``) holds :data:`RESERVE_BYTES` of the disk: when a
    save finds the disk full, the reserve is given up and the save tried again, so the
    record of where the station is stays true; the reserve is taken back when it can be.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "state.json"
        self.reserve = Path(state_dir) / ".state.reserve"

    def load(self) -> StationState | None:
        """The saved state, or None when there is none or it cannot be read (logged)."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read state file %s: %s", self.path, exc)
            return None
        try:
            return StationState.model_validate_json(raw)
        except ValidationError as exc:
            log.error("state file %s is unreadable, ignoring it: %s", self.path,
                      exc.errors()[0]["msg"] if exc.errors() else exc)
            return None

    def save(self, state: StationState) -> None:
        try:
            self._save(state)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.reserve.exists():
                raise
            log.error("disk full writing %s: releasing the state file's reserve", self.path)
            self.reserve.unlink(missing_ok=True)
            self._save(state)
            return
        if not self.reserve.exists():
            reserve_space(self.reserve, RESERVE_BYTES)

    def _save(self, state: StationState) -> None:
        make_dirs(self.path.parent)
        tmp = self.path.with_suffix(".json.tmp")
        data = json.dumps(state.model_dump(mode="json"), indent=2).encode()
        with os.fdopen(open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def stamp(state: StationState, now: datetime, **changes: object) -> StationState:
    """A copy of ``state`` with ``changes`` and ``updated = now``."""
    return state.model_copy(update={**changes, "updated": now})


def pass_state(entry: PassInfo, segment: int, phase: Phase, now: datetime,
               previous: PassState | None, earlier: list[SegmentState]) -> PassState | None:
    """The state file's record of the pass in progress after a change to ``phase`` (None
    once idle): the pass file and phase times carry over from ``previous`` when it is the
    same pass."""
    if phase == Phase.IDLE:
        return None
    same = previous is not None and previous.pass_id == entry.pass_id
    return PassState(
        pass_id=entry.pass_id, norad_id=entry.norad_id, segment=segment,
        aos=entry.aos, los=entry.los, qkd_start=entry.qkd_start or entry.aos,
        qkd_end=entry.qkd_end or entry.los,
        pass_file=previous.pass_file if previous and same else None,
        phase_times={**(previous.phase_times if previous and same else {}), phase.value: now},
        earlier_segments=earlier)


class ModeRecord:
    """The one record of mode, phase and the pass in progress, saved on every change.

    A save that fails raises the ``state.file`` alarm; the record in memory stays true
    and the next change tries again.
    """

    def __init__(self, state_dir: Path, clock: Clock, alarms: AlarmBook, start_mode: Mode):
        self.file = StateFile(state_dir)
        self.clock, self.alarms = clock, alarms
        self.state = StationState(mode=start_mode, updated=clock.now())
        #: Why the station is in its mode, in words ('' when chosen at start-up).
        self.mode_reason = ""

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def current_pass(self) -> PassState | None:
        return self.state.current_pass

    def update(self, **changes: object) -> None:
        """Change the record and save it."""
        self.state = stamp(self.state, self.clock.now(), **changes)
        try:
            self.file.save(self.state)
        except OSError as exc:
            self.alarms.raise_("state.file", Severity.WARNING,
                               f"cannot write the state file {self.file.path}: {exc}")

    def restore(self, state: StationState, mode_reason: str) -> None:
        """Take the record recovery made of what the previous run left, and save it."""
        self.state, self.mode_reason = state, mode_reason
        self.update()

    def set_mode(self, mode: Mode, reason: str = "") -> None:
        self.mode_reason = reason
        self.update(mode=mode)

    def enter_phase(self, phase: Phase, entry: PassInfo, segment: int,
                    earlier: list[SegmentState]) -> Phase:
        """Record the pass in progress entering ``phase``; returns the phase it left."""
        previous = self.phase
        self.update(phase=phase, current_pass=pass_state(
            entry, segment, phase, self.clock.now(), self.current_pass, earlier))
        return previous

    def file_opened(self, path: str) -> None:
        """The pass in progress writes ``path`` (recovery closes it after a crash)."""
        cur = self.current_pass
        if cur is not None:
            self.update(current_pass=cur.model_copy(update={"pass_file": path}))
