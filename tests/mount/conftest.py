"""Fixtures of the mount tests: real rotctld and indiserver on free loopback ports."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import find_tool, free_port, subprocess_env, wait_for_port


@dataclass
class Peer:
    port: int
    process: subprocess.Popen[bytes]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RotctldPeer(Peer):
    """A real rotctld that a test may stop and start again on the same port."""

    @staticmethod
    def launch(port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [find_tool("rotctld"), "-m", "1", "-T", "127.0.0.1", "-t", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(),
        )
        try:
            wait_for_port(port)
        except TimeoutError:
            _stop(proc)
            raise
        return proc

    def stop(self) -> None:
        _stop(self.process)

    def restart(self) -> None:
        self.stop()
        self.process = self.launch(self.port)


@pytest.fixture
def rotctld() -> Iterator[RotctldPeer]:
    """Hamlib's real ``rotctld`` with the dummy rotator (model 1) on a free port."""
    port = free_port()
    peer = RotctldPeer(port, RotctldPeer.launch(port))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def indi_telescope(tmp_path) -> Iterator[Peer]:
    """``indiserver`` running ``indi_simulator_telescope`` on a free loopback port.

    HOME points into the test's temporary folder: the simulator writes its config and
    park data under ~/.indi, which must not leak between runs.
    """
    port = free_port()
    proc = subprocess.Popen(
        [find_tool("indiserver"), "-p", str(port), find_tool("indi_simulator_telescope")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=subprocess_env(HOME=str(tmp_path)), cwd=tmp_path,
    )
    try:
        wait_for_port(port)
        yield Peer(port, proc)
    finally:
        _stop(proc)
