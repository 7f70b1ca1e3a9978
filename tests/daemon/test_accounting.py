"""The accounting of one segment from the values its parts hand over (no runner)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from station.daemon.accounting import Recorded, account, events_within, merge_causes, qkd_window
from station.daemon.modes import Outcome
from station.daemon.pass_runner import PassAborted, _sole_cause
from station.daemon.passreport import PassReport
from station.daemon.record import Cause
from station.orbit.passes import PassInfo


def _entry() -> PassInfo:
    t = datetime(2016, 12, 19, 16, 48, 43, tzinfo=UTC).timestamp()
    dt = lambda s: datetime.fromtimestamp(t + s, tz=UTC)  # noqa: E731
    return PassInfo.model_construct(
        pass_id="41731-20161219T164844Z", satellite="MICIUS", norad_id=41731, aos=dt(0),
        los=dt(400), tca=dt(200), qkd_start=dt(100), qkd_end=dt(200), max_el_deg=47.8)


def _report(entry: PassInfo) -> PassReport:
    return PassReport(pass_id=entry.pass_id, satellite=entry.satellite, norad_id=entry.norad_id,
                      planned_aos=entry.aos, planned_los=entry.los)


def test_a_window_recorded_whole_is_completed_and_a_gap_with_a_cause_degrades_it() -> None:
    entry = _entry()
    lo, hi = qkd_window(entry)
    whole = Recorded(spans=((lo, lo + 50), (lo + 50, hi)), span_events=(500, 500))
    acc = account(entry, _report(entry), whole, started_s=lo - 100, stream_pass_id="x",
                  now=entry.los, alarms_raised=0)
    assert acc.window_s == 100.0 and acc.window_lost_s == 0.0
    assert acc.segment.outcome == Outcome.COMPLETED and acc.segment.good_events == 1000
    # The same batches, but the pointing off for 20 s: a fifth of the window is lost.
    off = Recorded(spans=whole.spans, span_events=whole.span_events, causes=(
        Cause(start_s=lo + 10, end_s=lo + 30, cause="tracking error above the 600\" limit"),))
    acc = account(entry, _report(entry), off, started_s=lo - 100, stream_pass_id="x",
                  now=entry.los, alarms_raised=0)
    assert acc.window_lost_s == 20.0 and acc.window_lost_fraction == 0.2
    assert acc.segment.outcome == Outcome.DEGRADED and "tracking error" in acc.segment.reason
    assert [c.cause for c in acc.segment.causes] == ["tracking error above the 600\" limit"]


def test_the_accounting_helpers() -> None:
    assert events_within([(0, 10), (10, 20)], [3, 4], [(0, 12)]) == 3  # mostly inside only
    merged = merge_causes([Cause(start_s=0, end_s=1, cause="a"), Cause(start_s=1.5, end_s=3, cause="a"),
                           Cause(start_s=2, end_s=4, cause="b")])
    assert [(c.start_s, c.end_s, c.cause) for c in merged] == [(0, 3, "a"), (2, 4, "b")]


def test_a_task_group_does_not_hide_the_pass_abort() -> None:
    async def body_raises(exc: BaseException) -> BaseException:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(asyncio.sleep(10))
                raise exc
        except BaseExceptionGroup as g:  # Python 3.11 wraps even the body's exception
            return g
        raise AssertionError("no group")

    aborted = PassAborted("mount link lost")
    assert _sole_cause(asyncio.run(body_raises(aborted))) is aborted
    bug = KeyError("bug")
    assert _sole_cause(asyncio.run(body_raises(bug))) is bug
    # With other errors beside it, the abort still ends the pass as an abort; several
    # other errors stay grouped (None: re-raise the group).
    mixed = ExceptionGroup("g", [KeyError("x"), ExceptionGroup("inner", [aborted])])
    assert _sole_cause(mixed) is aborted
    assert _sole_cause(ExceptionGroup("g", [KeyError("a"), ValueError("b")])) is None
