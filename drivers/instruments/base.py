"""What every auxiliary VISA instrument shares: errors, options, and one SCPI session.

pyvisa is blocking, so :class:`ScpiSession` runs every exchange in a worker thread
(``asyncio.to_thread``) and serialises them with one lock per instrument: a command and
the ``SYST:ERR?`` that checks it are one transaction that nothing else can interleave with.
The same session code talks to a real instrument (``visa_library`` ``""``/``"@ivi"``,
``"@py"``) and to the pyvisa-sim YAML devices shipped next to this module
(``"<file>.yaml@sim"``).

SCPI error-queue entries (``-222,"Data out of range"``) become named exceptions that keep
the device's own words in ``device_message`` and its code in ``code``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import pyvisa
import pyvisa.errors
from pydantic import BaseModel, ConfigDict, Field

from drivers.errors import CommandRejected, ConnectionLost, DriverError, LimitError, NotConnected

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Folder of the pyvisa-sim YAML files shipped in this package.
SIM_DIR = Path(__file__).resolve().parent

#: SCPI's "not a number" (IEEE 488.2 / SCPI-99 §7.2.1.5): a reading with nothing behind it.
SCPI_NAN = 9.91e37


def sim_library(yaml_name: str) -> str:
    """The ``visa_library`` string that opens a shipped YAML file with pyvisa-sim."""
    return f"{SIM_DIR / yaml_name}@sim"


# --- errors -------------------------------------------------------------------------------


class InstrumentError(DriverError):
    """Any failure of an auxiliary instrument."""


class InstrumentConnectionLost(InstrumentError, ConnectionLost):
    """The VISA link is down, the resource is not there, or the instrument did not answer."""


class InstrumentNotConnected(InstrumentError, NotConnected):
    """Used before ``connect()`` or after ``close()``."""


class InstrumentIdentityMismatch(InstrumentError):
    """Something answered at that address, but its ``*IDN?`` is not the expected one."""


class ScpiError(InstrumentError, CommandRejected):
    """The instrument put an entry in its SCPI error queue.

    ``code`` is the SCPI error number, ``device_message`` the text it gave, ``command`` what
    we had sent, ``more`` any further entries drained from the queue at the same time.
    """

    def __init__(
        self,
        message: str,
        *,
        device: str = "",
        device_message: str | None = None,
        code: int = 0,
        command: str = "",
        more: tuple[ErrorEntry, ...] = (),
    ):
        self.code = code
        self.command = command
        self.more = more
        super().__init__(message, device=device, device_message=device_message)


class ScpiCommandError(ScpiError):
    """-100..-199: the instrument did not understand the command (syntax, header)."""


class ScpiExecutionError(ScpiError):
    """-200..-299: understood, but could not be carried out in the present state."""


class ScpiSettingsConflict(ScpiExecutionError):
    """-221: valid on its own, but not with the instrument's other settings or state."""


class ScpiDataOutOfRange(ScpiExecutionError, LimitError):
    """-222: a value outside the instrument's own range."""


class ScpiDeviceError(ScpiError):
    """-300..-399 and positive codes: the instrument's own, device-specific faults."""


class ScpiQueryError(ScpiError):
    """-400..-499: a problem with the output queue (query interrupted, unterminated)."""


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One entry read from the SCPI error queue."""

    code: int
    message: str

    def __str__(self) -> str:
        return f'{self.code},"{self.message}"'


def error_class(code: int) -> type[ScpiError]:
    """The named exception for a SCPI error code (SCPI-99 vol. 2 §21.8 ranges)."""
    if code == -221:
        return ScpiSettingsConflict
    if code == -222:
        return ScpiDataOutOfRange
    if -199 <= code <= -100:
        return ScpiCommandError
    if -299 <= code <= -200:
        return ScpiExecutionError
    if -499 <= code <= -400:
        return ScpiQueryError
    return ScpiDeviceError


_ERROR_RE = re.compile(r'^\s*([+-]?\d+)\s*(?:,\s*"?(.*?)"?)?\s*$')


def parse_error_entry(reply: str) -> ErrorEntry:
    """Parse a ``SYST:ERR?`` reply such as ``-222,"Data out of range"`` or ``0, No Error``."""
    match = _ERROR_RE.match(reply)
    if not match:
        raise ValueError(f"not a SCPI error-queue entry: {reply!r}")
    return ErrorEntry(int(match.group(1)), (match.group(2) or "").strip())


# --- reply parsing ------------------------------------------------------------------------


def parse_bool(reply: str) -> bool:
    """A SCPI boolean reply: ``1``/``0`` (as most instruments answer) or ``ON``/``OFF``."""
    text = reply.strip().upper()
    if text in ("1", "+1", "ON"):
        return True
    if text in ("0", "+0", "OFF"):
        return False
    raise ValueError(f"not a SCPI boolean: {reply!r}")


def parse_float(reply: str) -> float | None:
    """A SCPI number; ``None`` for SCPI's not-a-number (9.91E37) or infinities."""
    value = float(reply.strip())
    if abs(value) >= SCPI_NAN * 0.999 or value != value:
        return None
    return value


# --- options and results ------------------------------------------------------------------


class InstrumentOptions(BaseModel):
    """VISA options every instrument takes (a backend's nested ``Options`` extends this)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    resource_name: str = Field(
        min_length=1,
        description="VISA resource string, e.g. 'USB0::0x1313::0x804A::M00412345::INSTR', "
        "'TCPIP0::192.168.1.20::inst0::INSTR', 'TCPIP0::192.168.1.20::5025::SOCKET', "
        "'ASRL/dev/ttyUSB0::INSTR'.",
    )
    visa_library: str = Field(
        "",
        description="pyvisa library: '' for the system default (IVI/NI-VISA), '@py' for "
        "pyvisa-py, '<file>.yaml@sim' for pyvisa-sim.",
    )
    timeout_s: float = Field(
        2.0, gt=0, le=60, description="I/O timeout of one read or write."
    )
    open_timeout_s: float = Field(
        5.0, ge=0, le=60, description="How long opening the resource may wait for it."
    )
    write_termination: str = Field("\n", description="Appended to every command sent.")
    read_termination: str = Field(
        "\n", min_length=1, description="Ends every reply (trailing whitespace is stripped)."
    )
    baud_rate: int | None = Field(
        None, gt=0, description="Serial (ASRL) resources only: line speed in baud."
    )
    expected_idn: str = Field(
        "",
        description="If set, connect() fails unless the *IDN? reply contains this text "
        "(case-insensitive): guards against the wrong instrument at an address.",
    )
    transcript_len: int = Field(
        256, ge=0, le=100_000, description="Last exchanges kept for diagnostics and tests."
    )


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer to "can the station rely on this instrument for the next pass?"."""

    ok: bool
    #: One sentence a log line or an alarm can carry as is.
    reason: str


@dataclass(frozen=True, slots=True)
class Exchange:
    """One exchange on the wire: the exact bytes sent, and the bytes received (or None)."""

    sent: bytes
    received: bytes | None


# --- the session --------------------------------------------------------------------------


class ScpiSession:
    """One VISA resource spoken to in SCPI, safely from asyncio.

    ``query`` returns the reply; ``write`` sends a command and then drains ``SYST:ERR?``,
    raising the named :class:`ScpiError` for the first entry. A query the instrument does
    not answer within ``timeout_s`` is checked against the error queue too, so a refused
    query also surfaces the device's words.
    """

    #: The SCPI error-queue query (SCPI-99 ``SYSTem:ERRor[:NEXT]?``).
    ERROR_QUERY = "SYST:ERR?"
    #: More entries than this in one drain means the instrument is babbling.
    MAX_DRAIN = 32

    def __init__(self, options: InstrumentOptions, *, device: str):
        self.options = options
        self.device = device
        self.transcript: deque[Exchange] = deque(maxlen=options.transcript_len)
        self._rm: Any = None
        self._resource: Any = None
        self._lock = asyncio.Lock()
        # The asyncio lock keeps callers in order; this one makes sure a worker thread that
        # outlives a cancelled caller still finishes before the next exchange starts.
        self._thread_lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._resource is not None

    # async API ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the resource (a no-op when already open)."""
        await self._run(self._open_sync, need_open=False)

    async def close(self) -> None:
        """Close the resource (a no-op when closed). The library's ResourceManager is
        shared by every instrument of the process and stays open."""
        await self._run(self._close_sync, need_open=False)

    async def query(self, command: str) -> str:
        """Send ``command`` and return the reply, stripped of its termination."""
        return await self._run(self._query_sync, command)

    async def write(self, command: str) -> None:
        """Send ``command``, then raise the named :class:`ScpiError` if it queued an error."""
        await self._run(self._write_checked_sync, command)

    async def identify(self) -> str:
        """``*IDN?``, checked: an empty answer means nothing is there, and the reply must
        contain ``expected_idn`` when that is set."""
        identity = await self.query("*IDN?")
        if not identity:
            raise InstrumentConnectionLost(
                f"empty answer to *IDN? from {self.options.resource_name!r}: is an "
                f"instrument there?", device=self.device,
            )
        expected = self.options.expected_idn
        if expected and expected.lower() not in identity.lower():
            raise InstrumentIdentityMismatch(
                f"*IDN? answered {identity!r}, which does not contain expected_idn="
                f"{expected!r}: wrong instrument at {self.options.resource_name!r}?",
                device=self.device,
            )
        return identity

    async def drain_errors(self) -> list[ErrorEntry]:
        """Read the error queue until it is empty; return what was in it."""
        return await self._run(self._drain_sync)

    async def _run(self, fn: Callable[..., T], *args: Any, need_open: bool = True) -> T:
        async with self._lock:
            if need_open and self._resource is None:
                raise InstrumentNotConnected("not connected (call connect() first)",
                                             device=self.device)
            return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._thread_lock:
            return fn(*args)

    # blocking side (worker thread, lock held) ------------------------------------------

    def _open_sync(self) -> None:
        if self._resource is not None:
            return
        opts = self.options
        try:
            rm = pyvisa.ResourceManager(opts.visa_library)
        except (ValueError, OSError) as exc:
            raise InstrumentConnectionLost(
                f"cannot load VISA library {opts.visa_library or '(system default)'!r}: "
                f"{_first_line(exc)}; install NI-VISA/IVI, or pyvisa-py and set "
                f"visa_library = '@py'",
                device=self.device,
            ) from exc
        try:
            resource = rm.open_resource(
                opts.resource_name, open_timeout=int(opts.open_timeout_s * 1000)
            )
            # pyvisa-sim hands back session 0 instead of failing for an unknown address.
            if not resource.session:
                raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_resource_not_found)
            resource.timeout = opts.timeout_s * 1000
            resource.read_termination = opts.read_termination
            resource.write_termination = opts.write_termination
            if opts.baud_rate is not None and hasattr(resource, "baud_rate"):
                resource.baud_rate = opts.baud_rate
        except (pyvisa.errors.Error, OSError, ValueError) as exc:
            known = _known_resources(rm)
            hint = f"; resources this library knows: {', '.join(known)}" if known else ""
            raise InstrumentConnectionLost(
                f"cannot open {opts.resource_name!r}: {_first_line(exc)}{hint}",
                device=self.device,
            ) from exc
        self._rm, self._resource = rm, resource
        log.debug("%s: opened %s", self.device, opts.resource_name)

    def _close_sync(self) -> None:
        # Only the resource: pyvisa hands out one ResourceManager per library per process,
        # so closing it would close every other instrument opened through the same library.
        resource = self._resource
        self._resource = self._rm = None
        if resource is None:
            return
        try:
            resource.close()
        except (pyvisa.errors.Error, OSError) as exc:
            # Closing a link that already died must not hide why it died.
            log.warning("%s: error while closing: %s", self.device, exc)

    def _send(self, command: str) -> bytes:
        data = (command + self.options.write_termination).encode("ascii")
        try:
            self._resource.write_raw(data)
        except (pyvisa.errors.Error, OSError) as exc:
            self.transcript.append(Exchange(data, None))
            raise InstrumentConnectionLost(
                f"writing {command!r} failed: {_first_line(exc)}", device=self.device
            ) from exc
        return data

    def _receive(self, command: str, sent: bytes) -> str:
        try:
            raw = bytes(self._resource.read_raw())
        except pyvisa.errors.VisaIOError as exc:
            self.transcript.append(Exchange(sent, None))
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise _NoAnswer(command) from exc
            raise InstrumentConnectionLost(
                f"reading the answer to {command!r} failed: {_first_line(exc)}",
                device=self.device,
            ) from exc
        except (pyvisa.errors.Error, OSError) as exc:
            self.transcript.append(Exchange(sent, None))
            raise InstrumentConnectionLost(
                f"reading the answer to {command!r} failed: {_first_line(exc)}",
                device=self.device,
            ) from exc
        self.transcript.append(Exchange(sent, raw))
        return raw.decode("ascii", errors="replace").strip()

    def _query_raw_sync(self, command: str) -> str:
        return self._receive(command, self._send(command))

    def _query_sync(self, command: str) -> str:
        try:
            return self._query_raw_sync(command)
        except _NoAnswer:
            pass
        # No answer: a refused query leaves its reason in the error queue.
        try:
            entries = self._drain_sync()
        except InstrumentError:
            entries = []
        if entries:
            raise self._error(entries, command)
        raise InstrumentConnectionLost(
            f"no answer to {command!r} within timeout_s={self.options.timeout_s:g} s",
            device=self.device,
        )

    def _write_checked_sync(self, command: str) -> None:
        sent = self._send(command)
        self.transcript.append(Exchange(sent, None))
        entries = self._drain_sync()
        if entries:
            raise self._error(entries, command)

    def _drain_sync(self) -> list[ErrorEntry]:
        entries: list[ErrorEntry] = []
        for _ in range(self.MAX_DRAIN):
            try:
                reply = self._query_raw_sync(self.ERROR_QUERY)
            except _NoAnswer:
                raise InstrumentConnectionLost(
                    f"no answer to {self.ERROR_QUERY!r} within "
                    f"timeout_s={self.options.timeout_s:g} s",
                    device=self.device,
                ) from None
            try:
                entry = parse_error_entry(reply)
            except ValueError as exc:
                raise InstrumentError(str(exc), device=self.device) from None
            if entry.code == 0:
                return entries
            entries.append(entry)
        raise InstrumentError(
            f"error queue still not empty after {self.MAX_DRAIN} reads of "
            f"{self.ERROR_QUERY!r}; last entry {entries[-1]}",
            device=self.device,
        )

    def _error(self, entries: list[ErrorEntry], command: str) -> ScpiError:
        first = entries[0]
        cls = error_class(first.code)
        return cls(
            f"{command!r} refused: {first.code},{first.message!r}",
            device=self.device,
            device_message=first.message,
            code=first.code,
            command=command,
            more=tuple(entries[1:]),
        )


class ScpiInstrument:
    """What every SCPI instrument driver shares: the session, connect with an identity
    check and a cleared error queue, close, and use as an async context manager.

    Subclasses add their own steps after connecting (:meth:`_after_connect`) and before
    the link closes (:meth:`_before_close`), and their device's commands.
    """

    def __init__(self, options: InstrumentOptions, *, clock: Any, name: str):
        self.options = options
        self.name = name
        self._clock = clock
        self._session = ScpiSession(options, device=name)
        self.identity: str | None = None
        # Logged under the driver's own module, where an operator looks for it.
        self._log = logging.getLogger(type(self).__module__)

    @property
    def connected(self) -> bool:
        return self._session.is_open

    @property
    def transcript(self) -> deque[Exchange]:
        """The last exchanges on the wire (exact bytes), for diagnostics and tests."""
        return self._session.transcript

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the link, check the identity, clear stale errors, then the device's own
        steps. Raises :class:`InstrumentConnectionLost` (no such resource, no answer) or
        :class:`InstrumentIdentityMismatch`. A no-op when already connected."""
        if self.connected:
            return
        await self._session.open()
        try:
            self.identity = await self.identify()
            for entry in await self._session.drain_errors():
                self._log.warning("%s: stale error in the queue at connect: %s", self.name, entry)
            await self._after_connect()
        except BaseException:
            await self._session.close()
            raise
        self._log.info("%s: connected to %s (%s)", self.name, self.options.resource_name,
                       self.identity)

    async def close(self) -> None:
        """The device's closing steps, then close the link. Never raises for a link that
        is already gone: closing is part of recovering."""
        if not self.connected:
            return
        try:
            await self._before_close()
        except InstrumentError as exc:
            self._log.error("%s: while closing: %s", self.name, exc)
        finally:
            await self._session.close()
            self._log.info("%s: closed", self.name)

    async def identify(self) -> str:
        """The instrument's ``*IDN?`` reply (checked against ``expected_idn``)."""
        return await self._session.identify()

    async def _after_connect(self) -> None:
        """Device-specific steps once the link is up and identified."""

    async def _before_close(self) -> None:
        """Device-specific steps before the link closes."""


class _NoAnswer(Exception):
    """Internal: a read timed out (the caller decides what that means)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _known_resources(rm: Any) -> list[str]:
    """The resources a pyvisa-sim library defines (only there is that list exact and cheap)."""
    if "pyvisa_sim" not in type(rm.visalib).__module__:
        return []
    try:
        return list(rm.list_resources())
    except (pyvisa.errors.Error, OSError, ValueError):
        return []


__all__ = [
    "ScpiInstrument",
    "SCPI_NAN", "SIM_DIR", "ErrorEntry", "Exchange", "InstrumentConnectionLost",
    "InstrumentError", "InstrumentIdentityMismatch", "InstrumentNotConnected",
    "InstrumentOptions", "Readiness", "ScpiCommandError", "ScpiDataOutOfRange",
    "ScpiDeviceError", "ScpiError", "ScpiExecutionError", "ScpiQueryError",
    "ScpiSession", "ScpiSettingsConflict", "error_class", "parse_bool", "parse_error_entry",
    "parse_float", "sim_library",
]
