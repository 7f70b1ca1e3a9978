"""Fixtures shared by the whole suite: real peers on loopback, clocks, clean-up checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s} s")


def find_tool(name: str) -> str:
    """Path of a Debian tool (also looks in /usr/sbin, which is not always on PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{name} is not installed; `make test` installs it (Debian package)")
    return found


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    conf: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port (for reconnect tests)."""
        self.stop()
        self.process = _start_mosquitto(self.conf, self.port)


def _start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [find_tool("mosquitto"), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"mosquitto did not start on port {port}: {err}") from None
    return proc


def start_mosquitto(tmp: Path, extra_conf: str = "", port: int | None = None) -> Broker:
    """Start a real Mosquitto on a free loopback port; the caller stops it."""
    port = port or free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    body = extra_conf or f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    conf.write_text(f"persistence false\nlog_dest stderr\nlog_type error\n{body}")
    return Broker("127.0.0.1", port, _start_mosquitto(conf, port), conf)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One real Mosquitto for the session, anonymous, on a free loopback port."""
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto of the test's own (tests that stop or restart the broker)."""
    broker = start_mosquitto(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> None:
    """Fail a test that leaves asyncio tasks running behind it."""
    yield
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks(loop) if t is not current and not t.done()]
    if left:
        for t in left:
            t.cancel()
        names = ", ".join(sorted(t.get_name() for t in left))
        pytest.fail(f"test left asyncio tasks running: {names}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a peer process and reap it (kill it if it does not go)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RotctldPeer:
    """Hamlib's real ``rotctld -m 1`` (dummy rotator, 6°/s) that a test may restart."""

    port: int
    process: subprocess.Popen[bytes]

    @staticmethod
    def launch(port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [find_tool("rotctld"), "-m", "1", "-T", "127.0.0.1", "-t", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(),
        )
        try:
            wait_for_port(port)
        except TimeoutError:
            stop_process(proc)
            raise
        return proc

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.process = self.launch(self.port)


@pytest.fixture
def rotctld() -> Iterator[RotctldPeer]:
    """A real rotctld on a free loopback port, always stopped afterwards."""
    port = free_port()
    peer = RotctldPeer(port, RotctldPeer.launch(port))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def rotctld_port(rotctld: RotctldPeer) -> int:
    return rotctld.port


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


@contextmanager
def small_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs of ``options`` (e.g. "size=3m") mounted at ``mount_point`` for a full-disk
    test; root only, so the test is skipped cleanly elsewhere. Unmounted afterwards."""
    mount_point.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
