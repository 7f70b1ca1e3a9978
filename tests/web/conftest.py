"""The web view against real peers: the daemon (which starts the web view as its child),
Mosquitto, and Debian's headless Chromium driven by Selenium (nothing downloaded)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, stop_process, wait_for_port
from tests.daemon.conftest import DaemonProcess, start_daemon  # noqa: F401  (fixture)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Accounts of config/sim.toml (its comment documents the demo passwords).
OPERATOR = ("operator", "operator-demo")
VIEWER = ("viewer", "viewer-demo")


def artefact_dir() -> Path:
    """Where screenshots go: $QKD_WEB_ARTEFACTS or a fresh temporary folder (printed)."""
    base = os.environ.get("QKD_WEB_ARTEFACTS")
    path = Path(base) if base else Path(tempfile.mkdtemp(prefix="qkd-web-artefacts-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class WebStation:
    daemon: DaemonProcess
    url: str
    station_id: str
    mqtt_port: int
    web_port: int

    def stop(self) -> None:
        """A clean stop (SIGTERM): the daemon stops its web child on the way out."""
        if self.daemon.proc.poll() is None:
            self.daemon.signal(signal.SIGTERM)
            self.daemon.wait(30)


@pytest.fixture
def web_station(start_daemon: Callable[..., DaemonProcess], mosquitto: Any,  # noqa: F811
                tmp_path: Path) -> Iterator[Callable[..., WebStation]]:
    """Start the daemon with its web view on free ports, the station id of the test's own."""
    started: list[WebStation] = []

    def start(*, clock_start: str = "2016-12-19T08:00:00Z", speed: float = 1.0,
              env: dict[str, str] | None = None) -> WebStation:
        web_port = free_port()
        station_id = f"w{zlib.crc32(str(tmp_path).encode()):08x}"
        daemon = start_daemon(mqtt_port=mosquitto.port, clock_start=clock_start, speed=speed, env={
            "QKD_STATION__STATION_ID": station_id,
            "QKD_STATION__WEB__ENABLED": "true",
            "QKD_STATION__WEB__PORT": str(web_port),
            **(env or {}),
        })
        try:
            wait_for_port(web_port, timeout_s=60)
        except TimeoutError:
            daemon.stop()
            raise AssertionError(f"the web view did not listen:\n{daemon.log()[-3000:]}") from None
        ws = WebStation(daemon, f"http://127.0.0.1:{web_port}/", station_id, mosquitto.port, web_port)
        started.append(ws)
        return ws

    yield start
    for ws in started:
        ws.stop()


def open_chromium() -> Any:
    """Headless Debian Chromium through Debian's chromedriver; selenium-manager stays off."""
    os.environ["SE_MANAGER"] = "off"   # never let selenium fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="qkd-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy (wall deadline); its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def login(driver: Any, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    wait_until(lambda: driver.find_element(By.ID, "login-form").is_displayed(), 30, "the login form")
    driver.find_element(By.ID, "login-name").clear()
    driver.find_element(By.ID, "login-name").send_keys(name)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_until(lambda: driver.find_element(By.ID, "user-name").text == name, 30, f"login of {name}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One plain HTTP request (stdlib): (status, JSON body or {}, headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            status, hdrs = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        text, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {"_text": text.decode(errors="replace")}
    return status, parsed, hdrs


__all__ = ["OPERATOR", "VIEWER", "WebStation", "artefact_dir", "http", "login", "open_chromium",
           "stop_process", "wait_until"]
