"""Fixtures of the mount tests: the real indiserver on a free loopback port (the real
rotctld fixture is shared, in tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import (
    find_tool,
    free_port,
    stop_process,
    subprocess_env,
    wait_for_port,
)


@dataclass
class Peer:
    port: int
    process: subprocess.Popen[bytes]


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
        stop_process(proc)
