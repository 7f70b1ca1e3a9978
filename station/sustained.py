"""A condition that counts only once it has held for a while.

Tracking loss, a gate that keeps refusing targets and a tracking-error alarm all follow
one rule: a single bad reading means nothing, the same reading held for ``duration_s``
seconds of clock time means a fault. :class:`Sustained` is that rule, fed one reading at
a time with the reading's own clock time.
"""

from __future__ import annotations

__all__ = ["Sustained"]


class Sustained:
    """Whether a condition has held, reading after reading, for ``duration_s`` seconds.

    >>> s = Sustained(2.0)
    >>> s.update(True, 10.0), s.update(True, 11.0), s.update(True, 12.0)
    (False, False, True)
    >>> s.update(False, 12.5), s.active
    (False, False)
    """

    __slots__ = ("_since_s", "duration_s")

    def __init__(self, duration_s: float):
        self.duration_s = duration_s
        self._since_s: float | None = None

    @property
    def active(self) -> bool:
        """The condition held at the last reading."""
        return self._since_s is not None

    @property
    def since_s(self) -> float | None:
        """Clock time of the first reading of the current run, ``None`` if not active."""
        return self._since_s

    def held_s(self, now_s: float) -> float:
        """How long the current run has lasted at ``now_s`` (0 when not active)."""
        return 0.0 if self._since_s is None else now_s - self._since_s

    def update(self, holds: bool, now_s: float, *, since_s: float | None = None) -> bool:
        """Record one reading; True when the condition has now held for ``duration_s``.

        ``since_s`` is when a run that starts with this reading began, if earlier than
        ``now_s``: a reading that speaks for an unobserved stretch before it (the time
        since the previous reading, after a stall). It is ignored while a run lasts.

        >>> s = Sustained(2.0)
        >>> s.update(True, 10.0, since_s=7.5), s.since_s
        (True, 7.5)
        """
        if not holds:
            self._since_s = None
            return False
        if self._since_s is None:
            self._since_s = now_s if since_s is None else min(since_s, now_s)
        return now_s - self._since_s >= self.duration_s
