"""The byte-stream link of the line-protocol mount backends (rotctld over TCP, GS-232 over
a serial port): open, lose, and reopen with capped exponential backoff.

A failed exchange drops the link and schedules the next attempt; the next call reopens it
once the backoff has passed, or fails at once with the last error and the time to wait.
A cancelled exchange abandons the link without waiting, so a late reply can never answer
the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any

from drivers.mount._common import backoff_s
from drivers.mount.base import (
    MountConnectionLost,
    MountNotConnected,
    MountPosition,
    MountStatus,
)


class LinkState(enum.Enum):
    CLOSED = "closed"        # never connected, or close() called
    CONNECTED = "connected"
    LOST = "lost"            # dropped; the next call reopens it after the backoff


class StreamLink:
    """Mixin holding a reader/writer pair, and the status every line-protocol rotator
    reports the same way. Subclasses provide :meth:`_open_streams`,
    :attr:`_open_timeout_s`, :meth:`_open_failure` and :meth:`_reopened`; their options
    have ``reconnect_initial_s`` and ``reconnect_max_s``."""

    name: str
    options: Any
    _target: tuple[float, float] | None
    _last_pos: MountPosition | None
    _parking: bool
    #: Exceptions that mean "the link failed" while closing it.
    _drop_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def _init_link(self) -> None:
        self.state = LinkState.CLOSED
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._attempt = 0
        self._next_attempt_loop_s = 0.0
        self._last_error: str | None = None
        #: Links dropped and reopened since construction (reported in status).
        self.links_lost = 0
        self.reconnects = 0

    # -- what the backends provide -----------------------------------------------------------
    @property
    def _open_timeout_s(self) -> float:
        raise NotImplementedError

    async def _open_streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    def _open_failure(self, exc: BaseException) -> str:
        """The sentence for a failed open, naming the port or host."""
        raise NotImplementedError

    def _reopened(self) -> None:
        """Log a successful reopen."""
        raise NotImplementedError

    #: Exceptions of a failed open (besides the timeout).
    _open_errors: tuple[type[BaseException], ...] = (OSError,)
    #: What reopening is called for this link ("reconnect" a socket, "reopen" a port).
    _retry_word = "reconnect"

    # -- status, the same for every line-protocol rotator ---------------------------------------
    async def status(self) -> MountStatus:
        """Moving: away from the last target by more than ``arrived_tolerance_deg`` (or,
        with no target, moved since the last reading by more than the position
        resolution). The link state is the fault text when the link is down."""
        previous = self._last_pos
        try:
            pos = await self.position()  # type: ignore[attr-defined]
        except MountNotConnected:
            return MountStatus(False, False, False, False, None)
        except MountConnectionLost as exc:
            return MountStatus(False, False, False, False, str(exc))
        tol = self.options.arrived_tolerance_deg
        if self._target is not None:
            moving = (abs(pos.az_deg - self._target[0]) > tol
                      or abs(pos.el_deg - self._target[1]) > tol)
        else:
            step = getattr(self.options, "position_resolution_deg", 0.0)
            moving = previous is not None and (abs(pos.az_deg - previous.az_deg) > step
                                               or abs(pos.el_deg - previous.el_deg) > step)
        return MountStatus(connected=True, moving=moving, tracking=False,
                           parked=self._parking and not moving, fault=None)

    # -- the link ------------------------------------------------------------------------------
    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self._open_timeout_s):
                self._reader, self._writer = await self._open_streams()
        except (*self._open_errors, TimeoutError) as exc:
            self._schedule_retry(self._open_failure(exc))
            raise MountConnectionLost(self._last_error or "", device=self.name) from None
        self.state = LinkState.CONNECTED
        self._attempt = 0

    async def _ensure_link(self) -> None:
        if self.state is LinkState.CLOSED:
            raise MountNotConnected("not connected; call connect() first", device=self.name)
        if self.state is LinkState.CONNECTED:
            return
        loop_now = asyncio.get_running_loop().time()
        if loop_now < self._next_attempt_loop_s:
            raise MountConnectionLost(
                f"{self._last_error}; next {self._retry_word} in "
                f"{self._next_attempt_loop_s - loop_now:.2f} s", device=self.name)
        await self._open()
        self.reconnects += 1
        self._reopened()

    def _schedule_retry(self, reason: str) -> None:
        o = self.options
        delay = backoff_s(self._attempt, initial_s=o.reconnect_initial_s, max_s=o.reconnect_max_s)
        self._attempt += 1
        self._next_attempt_loop_s = asyncio.get_running_loop().time() + delay
        self._last_error = reason
        if self.state is LinkState.CONNECTED:
            self.state = LinkState.LOST

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(*self._drop_errors):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        # The transport finishes closing in a task of its own; let it run.
        for _ in range(3):
            await asyncio.sleep(0)

    def _abandon(self) -> None:
        """Drop the link without waiting; the next call reopens it at once."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        self.state = LinkState.LOST
        self._last_error = "previous exchange was cancelled"
        self._next_attempt_loop_s = 0.0

    async def _lose(self, reason: str) -> MountConnectionLost:
        self.links_lost += 1
        self._schedule_retry(reason)
        self.state = LinkState.LOST
        await self._drop()
        # Logged under the backend's own module, where an operator looks for it.
        logging.getLogger(type(self).__module__).warning("%s: %s", self.name, reason)
        return MountConnectionLost(reason, device=self.name)
