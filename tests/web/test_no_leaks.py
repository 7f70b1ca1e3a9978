"""No secret, key bit or simulator seed reaches the page or its feed, whatever is published
under the station's topics."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from typing import Any

import pytest

from tests.conftest import REPO, find_tool
from tests.web.conftest import wait_until

SEED = 918273645
SECRETS = [str(SEED), "SECRETKEYMATERIAL", "LEAKEDKEYTEXT", "deadbeefcafef00d", "0110100110010110",
           "hunter2-broker-password", "operator-demo", "scrypt$"]


def _pub(port: int, topic: str, payload: Any, retain: bool = False) -> None:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    subprocess.run([find_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                    "-t", topic, "-m", body, *(["-r"] if retain else [])], check=True, timeout=20)


class FeedReader:
    """Reads /api/feed in a thread, keeping every byte."""

    def __init__(self, url: str) -> None:
        self.data = bytearray()
        self._stop = False
        self._resp = urllib.request.urlopen(url, timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                chunk = self._resp.read1(65536)
            except (OSError, ValueError, AttributeError):  # closed under our feet by close()
                return
            if not chunk:
                return
            self.data += chunk

    def text(self) -> str:
        return bytes(self.data).decode(errors="replace")

    def close(self) -> None:
        self._stop = True
        self._resp.close()


@pytest.mark.slow
def test_no_secret_reaches_the_feed_or_the_page(web_station: Any, browser: Any) -> None:
    ws = web_station(clock_start="2016-12-19T16:45:30Z", speed=10, env={
        "QKD_STATION__TIMETAGGER__OPTIONS__SEED": str(SEED),
        "QKD_STATION__MQTT__PASSWORD": "hunter2-broker-password",
    })
    prefix = f"qkd/{ws.station_id}"
    feed = FeedReader(f"{ws.url}api/feed")
    wait_until(lambda: '"topic":"state"' in feed.text(), 60, "state on the feed")
    browser.get(ws.url)
    wait_until(lambda: browser.execute_script("return window.qkdState.state !== null"), 60, "state")

    pass_id = "41731-20161219T164844Z"
    port = ws.mqtt_port
    _pub(port, f"{prefix}/passes/{pass_id}/key", {
        "qber": 0.0105, "sifted_bits": 123456, "final_key_bits": 45678, "secure": True,
        "key": "0110100110010110", "key_b64": "SECRETKEYMATERIAL", "bits": [0, 1, 1, 0],
        "nested": {"key_hex": "deadbeefcafef00d", "blocks": 7, "deeper": {"x": {"seed": SEED}}},
        "huge": 2**80, "nan": "NaN", "sim_seed_text": str(SEED)})
    # The KME's levels message (postprocessing.kme.levels.KeyLevels) with a key stuffed in.
    _pub(port, f"{prefix}/keys/levels", {
        "time": "2016-12-19T16:45:40Z", "station_id": ws.station_id, "low_store_bits": 4096,
        "key": "LEAKEDKEYTEXT", "peers": [{"peer": "peer_b", "available_bits": 1048576, "available_blocks": 256,
                                           "reserved_blocks": 0, "consumed_blocks": 0, "low": False,
                                           "key_b64": "LEAKEDKEYTEXT"}]})
    _pub(port, f"{prefix}/secret/seed", {"seed": SEED})
    _pub(port, f"{prefix}/debug", f"seed={SEED}")
    _pub(port, f"{prefix}/reply/web-operator-x", {"result": {"seed": SEED}})
    _pub(port, f"{prefix}/mount", {"time": "2016-12-19T16:45:40.000Z", "actual_az_deg": 1, "actual_el_deg": 2,
                                   "moving": False, "parked": True, "seed": SEED})
    _pub(port, f"{prefix}/alarms", {"key": "x", "state": "raised", "severity": "info",
                                    "message": "hi", "time": "2016-12-19T16:45:40.000Z",
                                    "extra": "SECRETKEYMATERIAL"})
    _pub(port, "qkd/other-station/state", {"seed": SEED})
    # The key report's numbers do arrive, and render, generically.
    wait_until(lambda: "final_key_bits" in feed.text() and "available_bits" in feed.text(), 30,
               "the key numbers on the feed")
    wait_until(lambda: "final_key_bits" in browser.page_source, 30, "the key report on the page")
    # The pass runs on: the station's own pass messages (tagger, mount, pass) are in too.
    wait_until(lambda: '"to_phase":"track"' in feed.text() and '"acquiring":true' in feed.text(),
               120, "the pass tracking and acquiring on the feed")
    feed.close()
    text = feed.text()
    page = browser.execute_script("return document.documentElement.outerHTML")
    state_dump = browser.execute_script("return JSON.stringify(window.qkdState)")
    session = browser.execute_async_script(
        "const d = arguments[arguments.length-1]; fetch('/api/session').then(r => r.text()).then(d)")
    assets = "".join(urllib.request.urlopen(f"{ws.url}{p}", timeout=30).read().decode()
                     for p in ("", "static/app.js", "static/style.css"))
    for where, blob in (("feed", text), ("page", page), ("page state", state_dump),
                        ("session", session), ("assets", assets)):
        for secret in SECRETS:
            assert secret not in blob, f"{secret!r} reached the {where}"
    # Offline: the page fetched nothing but its own origin, and its assets name no other.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(ws.url) for r in resources), resources
    for name in ("index.html", "app.js", "style.css"):
        body = (REPO / "station" / "web" / "static" / name).read_text()
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body, name
    assert '"sifted_bits":123456' in text and '"nested.blocks":7' in text
    assert '"peer":"peer_b","available_bits":1048576' in text
    assert "secret/seed" not in text and "/debug" not in text and "reply/" not in text
