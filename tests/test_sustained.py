"""The "held for N seconds" rule every fault detector uses."""

from __future__ import annotations

from station.sustained import Sustained


def test_fires_only_after_the_duration():
    s = Sustained(2.0)
    assert [s.update(True, t) for t in (10.0, 11.0, 11.9, 12.0, 13.0)] == [False, False, False, True, True]
    assert s.since_s == 10.0 and s.held_s(13.0) == 3.0


def test_one_good_reading_restarts_the_run():
    s = Sustained(2.0)
    s.update(True, 10.0)
    s.update(True, 11.5)
    assert s.update(False, 11.8) is False and not s.active and s.held_s(20.0) == 0.0
    assert s.update(True, 12.0) is False
    assert s.update(True, 13.9) is False
    assert s.update(True, 14.0) is True


def test_zero_duration_fires_on_the_first_reading():
    assert Sustained(0.0).update(True, 5.0) is True


def test_a_reading_after_a_stall_speaks_for_the_unobserved_time():
    # The first bad reading after 5 s without any: the run began at the last reading seen.
    s = Sustained(2.0)
    assert s.update(True, 15.0, since_s=10.0) is True and s.since_s == 10.0
    # While the run lasts, since_s is ignored; a since_s later than now is taken as now.
    assert s.update(True, 16.0, since_s=15.5) is True and s.since_s == 10.0
    s.update(False, 17.0)
    assert s.update(True, 18.0, since_s=19.0) is False and s.since_s == 18.0
