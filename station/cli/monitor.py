"""``qkd-station monitor``: a live terminal view of one station, from its MQTT topics.

Reads only what the station publishes (status, state, mount, timetagger, pass, health,
alarms, and the key-store levels its KME publishes on ``keys/levels``), so it works from any machine that may subscribe: a dashboard account is enough.
``--once`` prints one plain-text frame once the retained state is in (scripts, tests).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
from pydantic import BaseModel, ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from postprocessing.kme.levels import KeyLevels
from station.cli._common import add_config_argument
from station.config import ConfigError
from station.mqtt import messages as m
from station.mqtt.client import ClientSettings, load_client_settings
from station.mqtt.service import client_kwargs

#: topic suffix -> payload model (status is plain text).
TOPICS: dict[str, type[BaseModel]] = {
    "state": m.StateMessage, "schedule": m.ScheduleMessage, "mount": m.MountTelemetry,
    "timetagger": m.TimeTaggerTelemetry, "pass": m.PassProgress, "health": m.HealthMessage,
    "alarms": m.AlarmMessage, "keys/levels": KeyLevels,
}
#: At most this many key-store peers are listed (the rest are counted).
MAX_KEY_PEERS = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("monitor", help="live terminal view of a station over MQTT")
    add_config_argument(p)
    p.add_argument("--station", metavar="ID", help="station id (default: station_id of the config)")
    add_credentials_arguments(p)
    p.add_argument("--once", action="store_true",
                   help="print one plain-text frame as soon as the retained state and one round "
                        "of telemetry have arrived (at the latest after --duration), then exit")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="collect for S wall seconds, then print a frame and exit (with --once: "
                        "the longest wait for retained state; default 3)")
    p.add_argument("--width", type=int, default=None, metavar="N", help="frame width in columns")
    p.set_defaults(func=run)


def add_credentials_arguments(p: argparse.ArgumentParser) -> None:
    """--username / --password-file: log in as yourself, not as the station."""
    p.add_argument("--username", "-u", metavar="USER",
                   help="broker user (default: mqtt.username; env QKD_STATION__MQTT__USERNAME)")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the password (default: mqtt.password_file)")


def settings_from_args(args: argparse.Namespace) -> ClientSettings:
    """Client settings from --config, --station and the credential options; exits 2 if bad."""
    try:
        settings = load_client_settings(args.config, station_id=args.station)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    update: dict[str, Any] = {}
    if args.username:
        update["username"] = args.username
    if args.password_file:
        update.update(password_file=args.password_file, password=None)
    if update:
        settings.mqtt = settings.mqtt.model_copy(update=update)
    return settings


@dataclass
class StationView:
    """The latest of everything a station published, as the monitor shows it."""

    station_id: str
    status: str | None = None
    latest: dict[str, BaseModel] = field(default_factory=dict)
    active_alarms: dict[str, m.AlarmMessage] = field(default_factory=dict)
    recent_alarms: deque[m.AlarmMessage] = field(default_factory=lambda: deque(maxlen=5))
    bad_payloads: int = 0
    last_problem: str = ""

    def update(self, suffix: str, payload: bytes) -> None:
        """Take one message (topic without the station prefix)."""
        if suffix == "status":
            self.status = payload.decode(errors="replace")
            return
        model = TOPICS.get(suffix)
        if model is None or not payload:
            return
        try:
            msg = model.model_validate_json(payload)
        except ValidationError as exc:
            self.bad_payloads += 1
            self.last_problem = f"{suffix}: {exc.errors()[0]['msg']}"
            return
        self.latest[suffix] = msg
        if isinstance(msg, m.AlarmMessage):
            self.recent_alarms.append(msg)
            if msg.state == m.AlarmState.RAISED:
                self.active_alarms[msg.key] = msg
            else:
                self.active_alarms.pop(msg.key, None)

    @property
    def has_state(self) -> bool:
        return self.status is not None and "state" in self.latest

    @property
    def complete(self) -> bool:
        """Retained state in, plus one round of the telemetry the current phase sends."""
        if not self.has_state:
            return False
        state = self.latest["state"]
        wanted = {"mount", "timetagger"}
        if isinstance(state, m.StateMessage) and state.current_pass is not None:
            wanted.add("pass")
        return wanted <= self.latest.keys()


def _t(when: datetime | None) -> str:
    return "—" if when is None else when.strftime("%H:%M:%SZ")


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _pass_line(p: m.PassRef | None) -> str:
    if p is None:
        return "none"
    return (f"{p.satellite} ({p.pass_id})  AOS {_t(p.aos)}  LOS {_t(p.los)}  "
            f"max el {p.max_el_deg:.1f}°")


def render(view: StationView) -> Group:
    """One frame of the station view."""
    rows = Table.grid(padding=(0, 2))
    rows.add_column(style="bold", min_width=12)
    rows.add_column()
    _state_rows(rows, view)
    _device_rows(rows, view)
    _health_row(rows, view.latest.get("health"))
    _plan_rows(rows, view.latest.get("schedule"))
    _key_rows(rows, view.latest.get("keys/levels"))
    return Group(_header(view), Panel(rows, expand=True), _alarm_rows(view))


def _header(view: StationView) -> Table:
    state = view.latest.get("state")
    status = (view.status or "unknown").upper()
    status_style = {"ONLINE": "bold green", "OFFLINE": "bold red"}.get(status, "yellow")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    title = Text(f"QKD station {view.station_id}")
    if isinstance(state, m.StateMessage):
        title.append(f" — {state.config.station_name}")
    head.add_row(title, Text(status, style=status_style))
    return head


def _state_rows(rows: Table, view: StationView) -> None:
    state = view.latest.get("state")
    progress = view.latest.get("pass")
    if not isinstance(state, m.StateMessage):
        rows.add_row("Mode", "— (no state yet)")
        return
    rows.add_row("Mode", Text(f"{state.mode.value.upper()}   phase {state.phase.value.upper()}   "
                              f"daemon {state.daemon_version}   uptime {_dur(state.uptime_s)}   "
                              f"at {_t(state.time)}" + (f"   {state.message}" if state.message else "")))
    cur = _pass_line(state.current_pass)
    if isinstance(progress, m.PassProgress) and state.current_pass is not None:
        cur += f"  elapsed {progress.elapsed_s:.0f} s  remaining {_num(progress.remaining_s, '.0f')} s"
    rows.add_row("Current pass", cur)
    nxt = _pass_line(state.next_pass)
    if state.next_pass is not None:
        # Countdown on the station's clock (a simulation's time is not ours).
        now = max((getattr(msg, "time", state.time) for msg in view.latest.values()),
                  default=state.time)
        wait_s = (state.next_pass.aos - now).total_seconds()
        nxt += f"  in {_dur(wait_s)}" if wait_s > 0 else ""
    rows.add_row("Next pass", nxt)


def _device_rows(rows: Table, view: StationView) -> None:
    mount = view.latest.get("mount")
    tagger = view.latest.get("timetagger")
    progress = view.latest.get("pass")
    if isinstance(mount, m.MountTelemetry):
        flags = [f for f, on in (("tracking", mount.tracking), ("moving", mount.moving),
                                 ("parked", mount.parked), ("DISCONNECTED", not mount.connected)) if on]
        rows.add_row("Mount", f"az {mount.actual_az_deg:8.3f}°  el {mount.actual_el_deg:7.3f}°   "
                              f"cmd az {_num(mount.commanded_az_deg, '8.3f')}° "
                              f"el {_num(mount.commanded_el_deg, '7.3f')}°   "
                              f"error {_num(mount.tracking_error_arcsec, '.1f')} arcsec   "
                              f"{' '.join(flags) or 'idle'}")
    else:
        rows.add_row("Mount", "—")
    if isinstance(tagger, m.TimeTaggerTelemetry):
        rates = "  ".join(f"{ch} {rate:,.0f}" for ch, rate in tagger.rates_hz.items())
        rows.add_row("Rates (Hz)", f"{rates}   {'ACQUIRING' if tagger.acquiring else 'idle'}   "
                                   f"overflow {'YES' if tagger.overflow else 'no'}"
                                   f" ({tagger.overflow_count})")
    else:
        rows.add_row("Rates (Hz)", "—")
    if isinstance(progress, m.PassProgress):
        rows.add_row("Events", f"recorded {progress.events_recorded:,}  streamed "
                               f"{progress.events_streamed:,}  lost {progress.events_lost:,}   "
                               f"el {_num(progress.el_deg, '.1f')}°  range {_num(progress.range_km, '.0f')} km")


def _health_row(rows: Table, health: BaseModel | None) -> None:
    if not isinstance(health, m.HealthMessage):
        return
    drivers = ", ".join(f"{d.name} {'up' if d.connected else 'DOWN'}" for d in health.drivers)
    parts = [("OK" if health.ok else "NOT READY"), drivers,
             f"disk free {_bytes(health.disk_free_bytes)} (pass needs {_bytes(health.expected_pass_bytes)})"]
    if health.time_reference_locked is not None:
        parts.append("time ref " + ("locked" if health.time_reference_locked else "UNLOCKED"))
    if health.stream_consumer_connected is not None:
        parts.append("consumer " + ("connected" if health.stream_consumer_connected else "ABSENT"))
    rows.add_row("Health", "; ".join(p for p in parts if p))


def _plan_rows(rows: Table, schedule: BaseModel | None) -> None:
    if not isinstance(schedule, m.ScheduleMessage) or not schedule.passes:
        return
    for i, sp in enumerate(schedule.passes[:4]):
        rows.add_row("Plan" if i == 0 else "",
                     f"{_t(sp.aos)} {sp.satellite:<14} max el {sp.max_el_deg:4.1f}°  "
                     f"{sp.decision.value:<8} {sp.reason}")
    if len(schedule.passes) > 4:
        rows.add_row("", f"… {len(schedule.passes) - 4} more")


def _key_rows(rows: Table, levels: BaseModel | None) -> None:
    """Key-store levels per peer (``P/keys/levels``, published by the station's KME)."""
    if not isinstance(levels, KeyLevels):
        return
    if not levels.peers:
        rows.add_row("Key store", f"no peers (at {_t(levels.time)})")
    for i, p in enumerate(levels.peers[:MAX_KEY_PEERS]):
        text = Text(f"{p.peer:<24} {p.available_bits:>12,} bits  {p.available_blocks:>7,} blocks"
                    f"  reserved {p.reserved_blocks:,}  consumed {p.consumed_blocks:,}")
        if p.low:
            text.append(f"  LOW (< {levels.low_store_bits:,} bits)", style="bold yellow")
        if i == 0:
            text.append(f"   at {_t(levels.time)}")
        rows.add_row("Key store" if i == 0 else "", text)
    if len(levels.peers) > MAX_KEY_PEERS:
        rows.add_row("", f"… {len(levels.peers) - MAX_KEY_PEERS} more peers")


def _alarm_rows(view: StationView) -> Table:
    alarms = Table.grid(padding=(0, 2))
    alarms.add_column(style="bold", min_width=12)
    alarms.add_column()
    if view.active_alarms:
        for a in view.active_alarms.values():
            style = {"critical": "bold red", "warning": "yellow"}.get(a.severity.value, "")
            alarms.add_row("Alarm", Text(f"{a.severity.value.upper()} {a.key}: {a.message} "
                                         f"(since {_t(a.time)})", style=style))
    else:
        alarms.add_row("Alarms", "none active")
    if view.bad_payloads:
        alarms.add_row("Warning", f"{view.bad_payloads} unreadable message(s); last: {view.last_problem}")
    return alarms


def render_text(view: StationView, width: int = 120) -> str:
    """The frame as plain text (no colour, no terminal codes)."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(
        render(view))
    return buf.getvalue()


async def watch(settings: ClientSettings, view: StationView, *, stop_when_state: bool,
                duration_s: float | None, on_update: Any = None) -> None:
    """Subscribe to the station and feed ``view`` until the duration ends (or, with
    ``stop_when_state``, until the view is complete)."""
    prefix = settings.topic_prefix + "/"
    async with aiomqtt.Client(**client_kwargs(settings.mqtt, None)) as client:
        for suffix in ("status", *TOPICS):
            await client.subscribe(prefix + suffix, qos=1)
        try:
            async with asyncio.timeout(duration_s):
                async for msg in client.messages:
                    view.update(msg.topic.value.removeprefix(prefix), bytes(msg.payload))  # type: ignore[arg-type]
                    if on_update is not None:
                        on_update()
                    if stop_when_state and view.complete:
                        return
        except TimeoutError:
            return


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = StationView(settings.station_id)
    width = args.width or (None if sys.stdout.isatty() else 120)
    try:
        if args.once or args.duration is not None or not sys.stdout.isatty():
            duration = args.duration if args.duration is not None else 3.0
            asyncio.run(watch(settings, view, stop_when_state=args.once, duration_s=duration))
            print(render_text(view, width or 120), end="")
            if not view.has_state:
                print(f"(no retained state from {settings.topic_prefix} within {duration:g} s: "
                      "is the station running and publishing to this broker?)", file=sys.stderr)
                return 1
            return 0
        return asyncio.run(_live(settings, view, width))
    except aiomqtt.MqttError as exc:
        print(f"cannot reach the MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}",
              file=sys.stderr)
        return 3


async def _live(settings: ClientSettings, view: StationView, width: int | None) -> int:
    from rich.live import Live

    console = Console(width=width)
    with Live(render(view), console=console, refresh_per_second=4, screen=False) as live:
        def refresh() -> None:
            live.update(render(view))

        while True:
            try:
                await watch(settings, view, stop_when_state=False, duration_s=None, on_update=refresh)
            except aiomqtt.MqttError as exc:
                view.status = f"broker unreachable: {exc}"
                refresh()
                await asyncio.sleep(2.0)  # wall pacing of reconnect attempts
