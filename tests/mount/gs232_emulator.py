"""A protocol-faithful Yaesu GS-232B controller on the master side of a pseudo-terminal.

The driver opens the slave side (a real tty) with pyserial, exactly as it would open a
USB serial adapter. The emulator answers the GS-232B commands the driver uses plus a few
it does not (C, B, M, P36/P45), moves its two axes at constant rates on the simulated
clock (position computed lazily from ``clock.now_s()``), reports whole degrees, and
answers anything else with the controller's ``?>`` prompt. Every byte exchanged is kept
in ``transcript`` as (received command, sent reply) pairs for byte-exact assertions.
"""

from __future__ import annotations

import asyncio
import os
import re
import tty
from dataclasses import dataclass, field


@dataclass
class _Axis:
    pos_deg: float
    rate_deg_s: float
    target_deg: float | None = None
    t_s: float = 0.0

    def advance(self, now_s: float) -> None:
        if self.target_deg is not None and now_s > self.t_s:
            step = self.rate_deg_s * (now_s - self.t_s)
            delta = self.target_deg - self.pos_deg
            if abs(delta) <= step:
                self.pos_deg, self.target_deg = self.target_deg, None
            else:
                self.pos_deg += step if delta > 0 else -step
        self.t_s = now_s


@dataclass
class Gs232Emulator:
    clock: object
    az_deg: float = 0.0
    el_deg: float = 0.0
    az_rate_deg_s: float = 6.0
    el_rate_deg_s: float = 2.5
    #: Answer set commands with CR LF (GS-232B, k3ng) or stay silent (what Hamlib assumes).
    ack_set_commands: bool = True
    transcript: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: When set, the controller reads commands but never answers (a hung unit).
    hung: bool = False

    def __post_init__(self) -> None:
        now = self.clock.now_s()
        self._az = _Axis(self.az_deg, self.az_rate_deg_s, t_s=now)
        self._el = _Axis(self.el_deg, self.el_rate_deg_s, t_s=now)
        self._mode_450 = True
        self._buffer = b""
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        self.port = os.ttyname(self.slave_fd)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master_fd, self._on_readable)

    def close(self) -> None:
        """Unplug: the tty pair goes away."""
        if self._loop is not None:
            self._loop.remove_reader(self.master_fd)
            self._loop = None
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master_fd = self.slave_fd = -1

    # -- state -------------------------------------------------------------------------------
    def position(self) -> tuple[float, float]:
        now = self.clock.now_s()
        self._az.advance(now)
        self._el.advance(now)
        return self._az.pos_deg, self._el.pos_deg

    # -- protocol ------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = os.read(self.master_fd, 1024)
        except OSError:
            return
        self._buffer += data
        while b"\r" in self._buffer:
            command, self._buffer = self._buffer.split(b"\r", 1)
            command = command.lstrip(b"\n")  # some hosts send CR LF
            reply = b"" if self.hung else self._answer(command.decode("ascii", "replace"))
            self.transcript.append((command + b"\r", reply))
            if reply:
                os.write(self.master_fd, reply)

    def _answer(self, cmd: str) -> bytes:
        ack = b"\r\n" if self.ack_set_commands else b""
        az, el = self.position()
        if cmd == "C2":
            return f"AZ={round(az):03d}  EL={round(el):03d}\r\n".encode()
        if cmd == "C":
            return f"AZ={round(az):03d}\r\n".encode()
        if cmd == "B":
            return f"EL={round(el):03d}\r\n".encode()
        if cmd == "S":
            self._az.target_deg = self._el.target_deg = None
            return ack
        if cmd == "A":
            self._az.target_deg = None
            return ack
        if cmd == "E":
            self._el.target_deg = None
            return ack
        if cmd in ("P36", "P45"):
            self._mode_450 = cmd == "P45"
            return ack
        max_az = 450 if self._mode_450 else 360
        if m := re.fullmatch(r"W(\d{3}) (\d{3})", cmd):
            new_az, new_el = int(m.group(1)), int(m.group(2))
            if new_az > max_az or new_el > 180:
                return b"?>\r\n"
            self._az.target_deg, self._el.target_deg = float(new_az), float(new_el)
            return ack
        if m := re.fullmatch(r"M(\d{3})", cmd):
            if int(m.group(1)) > max_az:
                return b"?>\r\n"
            self._az.target_deg = float(m.group(1))
            return ack
        return b"?>\r\n"
