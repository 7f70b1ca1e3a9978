"""Running the real daemon as a subprocess against real peers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, find_tool, free_port


def sub_once(port: int, topic: str, timeout_s: int = 20) -> str:
    """The first message on ``topic`` (retained ones included), via mosquitto_sub."""
    res = subprocess.run(
        [find_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic,
         "-C", "1", "-W", str(timeout_s)],
        capture_output=True, text=True, timeout=timeout_s + 5)
    if res.returncode != 0:
        raise AssertionError(f"no message on {topic} within {timeout_s} s: {res.stderr.strip()}")
    return res.stdout.strip()


@dataclass
class NotifySocket:
    """A real unix datagram socket standing in for systemd's notify socket."""

    path: Path
    sock: socket.socket
    messages: list[tuple[float, str]] = field(default_factory=list)

    def wait_for(self, text: str, timeout_s: float = 30.0) -> float:
        """Wall time at which a datagram containing ``text`` arrived."""
        for t, msg in self.messages:
            if text in msg:
                return t
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            now = time.monotonic()
            self.messages.append((now, data))
            if text in data:
                return now
        raise AssertionError(f"no {text!r} on the notify socket; got {[m for _, m in self.messages]}")

    def drain(self, duration_s: float) -> None:
        end = time.monotonic() + duration_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                return


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = Path(f"/tmp/qkd-notify-{os.getpid()}-{free_port()}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield NotifySocket(path, sock)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[str]
    config: Path
    mqtt_port: int
    stream_endpoint: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout_s: float = 30.0) -> None:
        """Wait until ``text`` appears in the daemon's log (polling the file)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the daemon log:\n{self.log()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout_s} s:\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def copy_sim_config(dest: Path) -> Path:
    """config/sim.toml and its element files, copied so a test may edit them."""
    shutil.copytree(REPO / "config" / "elements", dest / "elements")
    target = dest / "sim.toml"
    target.write_text((REPO / "config" / "sim.toml").read_text())
    return target


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Start ``qkd-station run`` on a copy of config/sim.toml; env overrides per test."""
    started: list[DaemonProcess] = []

    def start(*, mqtt_port: int, embedded: bool = False, env: dict[str, str] | None = None,
              clock_start: str | None = "2016-12-19T08:00:00Z", speed: float | None = None,
              config: Path | None = None) -> DaemonProcess:
        config = config or copy_sim_config(tmp_path)
        stream = f"tcp://127.0.0.1:{free_port()}"
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update({
            "QKD_STATION__MQTT__PORT": str(mqtt_port),
            "QKD_STATION__MQTT__EMBEDDED": "true" if embedded else "false",
            "QKD_STATION__STATE_DIR": str(tmp_path / "state"),
            "QKD_STATION__EVENTS__STREAM_ENDPOINT": stream,
            "PYTHONUNBUFFERED": "1",
            # config/sim.toml serves the web view on a fixed port; daemon tests do not need
            # it (tests/web turns it on, on a free port).
            "QKD_STATION__WEB__ENABLED": "false",
        })
        if clock_start is not None:
            full_env["QKD_STATION__CLOCK__START"] = clock_start
        if speed is not None:
            full_env["QKD_STATION__CLOCK__SPEED"] = str(speed)
        full_env.update(env or {})
        log_path = tmp_path / f"daemon-{len(started)}.log"
        logf = open(log_path, "w")
        proc = subprocess.Popen([sys.executable, "-m", "station", "run", "--config", str(config)],
                                stdout=logf, stderr=subprocess.STDOUT, text=True, env=full_env,
                                cwd=REPO)
        logf.close()  # the child holds its own descriptor
        d = DaemonProcess(proc, config, mqtt_port, stream, log_path)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
