"""The catalog of orbital element sets the station plans passes with.

Sources are files or directories of element files (:mod:`station.orbit.elements` reads
each format and validates each record; a bad record is one ``file:line: reason`` and the
rest still load). When a satellite appears more than once, the element set with the
newest epoch wins. Ages are measured against the station's clock (real or simulated),
never the computer's wall clock.

Loading is synchronous file I/O and parsing; the daemon calls :meth:`Catalog.reload` on
SIGHUP from a worker thread. The element sets are swapped in one assignment, so a planner
running in another thread sees either the old or the new catalog, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

# The element formats were split out of this module; their names stay importable here.
from station.orbit.elements import (
    MAX_FILE_BYTES,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_PROBLEMS_PER_FILE,
    ElementError,
    ElementFormat,
    ElementSet,
    parse_elements,
    parse_file,
    satellite_from_text,
    sniff_format,
    tle_checksum,
)

__all__ = [
    "ELEMENT_SUFFIXES",
    "MAX_FILE_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PROBLEMS_PER_FILE",
    "Catalog",
    "ElementAge",
    "ElementError",
    "ElementFormat",
    "ElementSet",
    "LoadReport",
    "fixed_clock",
    "parse_elements",
    "parse_file",
    "satellite_from_text",
    "sniff_format",
    "tle_checksum",
]

#: File name endings read from a source directory (others are skipped and counted).
ELEMENT_SUFFIXES = {".tle", ".txt", ".2le", ".3le", ".json", ".xml", ".kvn", ".omm"}


class _NowSource(Protocol):
    def now_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ElementAge:
    """How old one satellite's elements are on the station's clock."""

    norad_id: int
    name: str
    epoch: datetime
    age_days: float
    stale: bool
    warning: str | None


@dataclass(slots=True)
class LoadReport:
    """What one load or reload did: counts, rejected records, replaced duplicates."""

    loaded: int = 0
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parts = [f"{self.loaded} element set(s) from {self.files} file(s)"]
        if self.problems:
            parts.append(f"{len(self.problems)} rejected record(s)")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} older duplicate(s) dropped")
        if self.skipped_files:
            parts.append(f"{len(self.skipped_files)} file(s) skipped")
        if self.kept:
            parts.append(f"{len(self.kept)} previous element set(s) kept from broken files")
        return ", ".join(parts)

    def alarm_text(self) -> str | None:
        """The daemon's alarm for this load (None when every file loaded cleanly): what
        failed, where first, and that the previous elements of broken files are kept."""
        if not self.problems:
            return None
        text = f"element files with problems: {self.summary()}; first: {self.problems[0]}"
        return text if len(text) <= 400 else text[:399] + "…"


def _expand(sources: Iterable[Path], report: LoadReport) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            try:
                children = sorted(source.iterdir())
            except OSError as exc:
                report.problems.append(f"{source}:0: cannot list the directory: {exc.strerror or exc}")
                continue
            for child in children:
                if child.name.startswith(".") or not child.is_file():
                    continue  # hidden and temporary files (e.g. a `tle update` in progress)
                if child.suffix.lower() in ELEMENT_SUFFIXES:
                    files.append(child)
                else:
                    report.skipped_files.append(f"{child}: not an element file name ({', '.join(sorted(ELEMENT_SUFFIXES))})")
        elif source.is_file():
            files.append(source)
        else:
            report.problems.append(f"{source}:0: element source does not exist")
    return files


class Catalog:
    """Element sets by NORAD number, loaded from the configured sources.

    ``clock`` is anything with ``now_s()`` (the station's Clock); ages and staleness
    warnings use it.
    """

    def __init__(
        self,
        sources: Iterable[Path],
        clock: _NowSource,
        *,
        max_age_days: float = 3.0,
    ) -> None:
        self.sources = [Path(s) for s in sources]
        self.clock = clock
        self.max_age_days = max_age_days
        self._sets: dict[int, ElementSet] = {}
        self.last_report = LoadReport()

    @classmethod
    def load(
        cls, sources: Iterable[Path], clock: _NowSource, *, max_age_days: float = 3.0
    ) -> Catalog:
        """A catalog read from ``sources`` now; see :attr:`last_report` for what was rejected."""
        catalog = cls(sources, clock, max_age_days=max_age_days)
        catalog.reload()
        return catalog

    @classmethod
    def from_config(cls, orbit_cfg: object, clock: _NowSource) -> Catalog:
        """``Catalog.load(cfg.orbit.element_sources, clock, max_age_days=...)``."""
        return cls.load(
            orbit_cfg.element_sources,  # type: ignore[attr-defined]
            clock,
            max_age_days=orbit_cfg.max_element_age_days,  # type: ignore[attr-defined]
        )

    def reload(self) -> LoadReport:
        """Re-read every source (SIGHUP). Blocking file I/O: call it off the event loop.

        The new element sets replace the old ones in one step. A satellite whose file still
        exists but now fails to load (hand-edited, half-copied) keeps its previous element
        set, reported in ``kept``; a satellite whose file was removed leaves the catalog.
        """
        report = LoadReport()
        newest: dict[int, ElementSet] = {}
        broken: set[str] = set()
        for path in _expand(self.sources, report):
            report.files += 1
            sets, problems = parse_file(path)
            report.problems.extend(problems)
            if problems:
                broken.add(str(path))
            for es in sets:
                old = newest.get(es.norad_id)
                if old is None:
                    newest[es.norad_id] = es
                    continue
                keep, drop = (es, old) if es.epoch > old.epoch else (old, es)
                newest[es.norad_id] = keep
                report.duplicates.append(
                    f"{drop.source}: {drop.name} ({drop.norad_id}) epoch {drop.epoch:%Y-%m-%dT%H:%M:%SZ} "
                    f"superseded by {keep.source} epoch {keep.epoch:%Y-%m-%dT%H:%M:%SZ}"
                )
        for norad, old in self._sets.items():
            old_file = old.source.rsplit(":", 1)[0]
            if norad not in newest and old_file in broken:
                newest[norad] = old
                report.kept.append(
                    f"{old.source}: kept the previous elements of {old.name} ({norad}, epoch "
                    f"{old.epoch:%Y-%m-%dT%H:%M:%SZ}) because the file now fails to load"
                )
        report.loaded = len(newest)
        self._sets = dict(sorted(newest.items()))
        self.last_report = report
        return report

    # -- lookup -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sets)

    def __iter__(self) -> Iterator[ElementSet]:
        return iter(list(self._sets.values()))

    def __contains__(self, norad_id: object) -> bool:
        return norad_id in self._sets

    def get(self, norad_id: int) -> ElementSet | None:
        """The element set of ``norad_id``, or None when the catalog lacks it."""
        return self._sets.get(norad_id)

    def __getitem__(self, norad_id: int) -> ElementSet:
        try:
            return self._sets[norad_id]
        except KeyError:
            raise KeyError(
                f"no element set for NORAD {norad_id} in {', '.join(map(str, self.sources)) or 'the catalog'}; "
                "add its TLE/OMM file there (`qkd-station tle update SOURCE`)"
            ) from None

    def snapshot(self) -> dict[int, ElementSet]:
        """The current element sets (a copy: safe to use while a reload happens)."""
        return dict(self._sets)

    # -- ages ---------------------------------------------------------------------

    def ages(self, now_s: float | None = None) -> list[ElementAge]:
        """Each element set's age on the clock, with a warning when older than the limit."""
        now = self.clock.now_s() if now_s is None else now_s
        out = []
        for es in self._sets.values():
            age = es.age_days(now)
            stale = age > self.max_age_days
            warning = None
            if stale:
                warning = (
                    f"elements of {es.name} ({es.norad_id}) are {age:.1f} days old "
                    f"(epoch {es.epoch:%Y-%m-%dT%H:%M:%SZ}, limit {self.max_age_days:g} days); "
                    "predictions drift by kilometres per day: update them"
                )
            elif age < -1:
                warning = (
                    f"elements of {es.name} ({es.norad_id}) have an epoch {-age:.1f} days in the "
                    f"future ({es.epoch:%Y-%m-%dT%H:%M:%SZ}); is the clock right?"
                )
            out.append(ElementAge(es.norad_id, es.name, es.epoch, age, stale, warning))
        return out

    def warnings(self, now_s: float | None = None) -> list[str]:
        """Age warnings only (see :meth:`ages`)."""
        return [a.warning for a in self.ages(now_s) if a.warning]


def fixed_clock(now_s: float) -> _NowSource:
    """A clock frozen at ``now_s``, for one-shot tools (e.g. the CLI)."""

    class _Fixed:
        def now_s(self) -> float:
            return now_s

    return _Fixed()

