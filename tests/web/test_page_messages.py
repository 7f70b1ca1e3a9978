"""The page against the exact messages its producers publish, over a real Mosquitto, in
headless Chromium: the distiller's key report and the KME's key-store levels (built and
published by their own code), phase changes with their reason and key-relay events on
``transitions``, and the mount's telemetry while the station slews in prepare.

The web view runs on its own here (``qkd-station web``, as the daemon starts it), with no
station: the test is the only publisher, so it knows every byte the page could show.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from postprocessing.relay.events import KeyRelayEvent
from tests.conftest import REPO, free_port, stop_process, wait_for_port
from tests.web.conftest import artefact_dir, open_chromium, wait_until

MICIUS = "41731-20161219T164844Z"
STATION = "pagetest-sim"


@dataclass
class Page:
    driver: Any
    url: str
    prefix: str
    mqtt_port: int

    def publish(self, *messages: tuple[str, Any]) -> None:
        """Publish (suffix, payload) pairs, QoS 1, in order, over one connection."""
        from paho.mqtt import publish

        publish.multiple([{"topic": f"{self.prefix}/{suffix}", "qos": 1,
                           "payload": body if isinstance(body, str | bytes) else json.dumps(body)}
                          for suffix, body in messages], hostname="127.0.0.1", port=self.mqtt_port)

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def text(self, element_id: str) -> str:
        return self.js(f"const e = document.getElementById('{element_id}'); return e ? e.textContent : null") or ""

    def everything(self) -> str:
        """All the page holds: its markup, its text and its script state."""
        return self.js("return document.documentElement.outerHTML + document.body.innerText"
                       " + JSON.stringify(window.qkdState)")


@pytest.fixture(scope="module")
def page(mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("page")
    port = free_port()
    env = {**os.environ, "QKD_STATION__STATION_ID": STATION, "QKD_STATION__STATE_DIR": str(tmp / "state"),
           "QKD_STATION__MQTT__PORT": str(mosquitto.port), "QKD_STATION__MQTT__EMBEDDED": "false",
           "QKD_STATION__WEB__PORT": str(port)}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "station", "web", "--config", str(REPO / "config" / "sim.toml")],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = None
    try:
        wait_for_port(port, timeout_s=60)
        driver = open_chromium()
        url = f"http://127.0.0.1:{port}/"
        driver.get(url)
        p = Page(driver, url, f"qkd/{STATION}", mosquitto.port)
        wait_until(lambda: p.text("feed-state") == "live", 60, "the page's feed")
        # The web view is subscribed once a message of ours comes through.
        wait_until(lambda: (p.publish(("status", "online")), p.text("status") == "online")[1], 60,
                   "the web view's broker subscription")
        yield p
    finally:
        if driver is not None:
            driver.quit()
        stop_process(proc)


def _state(phase: str, when: str) -> dict[str, Any]:
    from station.mqtt.messages import ConfigSummary, PassRef, StateMessage

    ref = PassRef(pass_id=MICIUS, satellite="MICIUS", norad_id=41731, aos="2016-12-19T16:48:44Z",
                  los="2016-12-19T16:55:14Z", max_el_deg=79.4)
    return json.loads(StateMessage(
        time=when, station_id=STATION, daemon_version="test", started_at="2016-12-19T16:40:00Z",
        uptime_s=60, mode="auto", phase=phase, current_pass=ref if phase != "idle" else None,
        next_pass=None if phase != "idle" else ref,
        config=ConfigSummary(station_name="Page test", latitude_deg=40.4, longitude_deg=117.6, height_m=900,
                             clock_source="simulated", clock_speed=1.0, mount_backend="sim",
                             timetagger_backend="sim")).model_dump_json())


def _mount(when: str, az: float, el: float) -> dict[str, Any]:
    from station.mqtt.messages import MountTelemetry

    return json.loads(MountTelemetry(time=when, actual_az_deg=az, actual_el_deg=el, commanded_az_deg=az + 1.0,
                                     commanded_el_deg=el + 0.5, moving=True, parked=False,
                                     tracking=False).model_dump_json())


def _transition(when: str, from_phase: str, to_phase: str, **extra: Any) -> dict[str, Any]:
    # Built by hand: the station's model gains kind and reason in a parallel change.
    return {"time": when, "pass_id": MICIUS, "satellite": "MICIUS", "segment": 1,
            "from_phase": from_phase, "to_phase": to_phase, "mode": "auto", **extra}


def _marker(p: Page) -> dict[str, Any] | None:
    return p.js("const m = document.getElementById('mount-marker');"
                "return m && m.getAttribute('display') !== 'none' ? {az: Number(m.getAttribute('data-az')),"
                " el: Number(m.getAttribute('data-el')), time: m.getAttribute('data-time'),"
                " trail: (document.getElementById('mount-trail').getAttribute('points') || '').split(' ').length} : null")


@pytest.mark.slow
def test_reason_relay_events_and_the_slew_in_prepare(page: Page) -> None:
    p = page
    # An older station's phase change (no kind, no reason): shown as before, no reason.
    p.publish(("state", _state("prepare", "2016-12-19T16:46:43.000Z")),
              ("transitions", _transition("2016-12-19T16:46:43.000Z", "idle", "prepare")))
    wait_until(lambda: p.text("phase") == "prepare" and "idle → prepare" in p.text("last-transition"), 60,
               "the prepare phase on the page")
    assert p.text("phase-reason") == ""

    # The slew of prepare: mount telemetry from the park position towards the rise point.
    # The marker follows it (no phase hides it), and its trail grows.
    slew = [(f"2016-12-19T16:46:{44 + i:02d}.000Z", 10.0 + 12.0 * i, 80.0 - 7.0 * i) for i in range(10)]
    seen: list[float] = []
    for when, az, el in slew:
        p.publish(("mount", _mount(when, az, el)))
        mark = wait_until(lambda when=when: (m := _marker(p)) and m["time"] == when and m, 30,
                          f"the marker at {when}")
        assert (mark["az"], mark["el"]) == (az, el)
        seen.append(mark["az"])
    assert seen == [s[1] for s in slew]
    assert _marker(p)["trail"] >= len(slew), "the slew's trail is not drawn"
    assert p.text("phase") == "prepare"

    # A relay event, a kind the page does not know, then a phase change with its reason.
    relay_event = KeyRelayEvent(time=datetime(2016, 12, 19, 16, 48, tzinfo=UTC), station_id="beijing-sim",
                                step="recovered", role="receiving", partner="stellenbosch-sim",
                                satellite="jinan-1-sim", key_ids=2, bits=131_072)
    p.publish(("transitions", json.loads(relay_event.model_dump_json())),
              ("transitions", {**_transition("2016-12-19T16:48:10.000Z", "prepare", "park"), "kind": "teleport",
                               "reason": "UNKNOWN-KIND-SHOWN"}),
              ("transitions", _transition("2016-12-19T16:48:44.000Z", "prepare", "track", kind="phase",
                                          reason="AOS: MICIUS rose above the horizon mask")),
              ("state", _state("track", "2016-12-19T16:48:44.000Z")))
    wait_until(lambda: p.text("phase") == "track" and "AOS: MICIUS rose" in p.text("phase-reason"), 60,
               "the reason beside mode and phase")
    items = p.js("return [...document.querySelectorAll('#transitions li')].map(li => [li.className, li.textContent])")
    texts = [t for _, t in items]
    assert any("prepare → track" in t and "AOS: MICIUS rose" in t for t in texts), texts
    relay = [t for c, t in items if c == "kind-relay"]
    assert len(relay) == 1 and "key relay recovered: 2 key IDs, 131072 bits" in relay[0] \
        and "partner stellenbosch-sim via jinan-1-sim" in relay[0], items
    assert "prepare → track" in p.text("last-transition")   # a relay event is not a phase change
    assert "UNKNOWN-KIND-SHOWN" not in p.everything() and "teleport" not in p.everything()
    # The phase steps count phase changes only.
    done = p.js("return [...document.querySelectorAll('#phase-steps li.done')].map(li => li.dataset.phase)")
    assert done == ["prepare", "track"], done
    shot = artefact_dir() / "transitions-reason.png"
    p.driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


@pytest.mark.slow
def test_the_key_panel_with_the_distillers_and_the_kmes_own_messages(page: Page, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    import aiomqtt

    from postprocessing.keystore import KeyStore
    from postprocessing.kme.levels import LevelsMqttConfig, LevelsPublisher
    from postprocessing.report import BasisBounds, EcFigures, KeyReport, publish_report
    from station.clock import SimClock

    p = page
    # A key store holding a real key (whose bits must never reach the page), partly used.
    rng = np.random.default_rng(2016)
    key_bits = rng.integers(0, 2, 10 * 4096 + 100, dtype=np.uint8)
    clock = SimClock(datetime(2016, 12, 19, 17, 20, tzinfo=UTC), manual=True)
    store = KeyStore(tmp_path / "keys", clock=clock)
    try:
        store.deposit("stellenbosch-sim", MICIUS, key_bits, block_bits=4096)
        taken = store.take("stellenbosch-sim", 2, purpose="test")
        taken_packed = [b.packed() for b in taken]
        cfg = LevelsMqttConfig(port=p.mqtt_port, station_id=STATION, low_store_bits=4096,
                               peers=["jinan1-sim"])

        async def publish_levels() -> None:
            async with aiomqtt.Client("127.0.0.1", p.mqtt_port) as client:
                await LevelsPublisher(store, cfg, clock=clock).publish_once(client)

        asyncio.run(publish_levels())
    finally:
        store.close()

    classes = ("signal", "decoy", "vacuum")
    report = KeyReport(
        pass_id=MICIUS, station=STATION, satellite="MICIUS", outcome="stored",
        detections=3_280_442, gated_detections=3_084_737, sifted_bits=1_542_633,
        sifted={b: {c: 400_000 for c in classes} for b in "ZX"}, kept={b: {c: 400_000 for c in classes} for b in "ZX"},
        errors={b: {c: 4_200 for c in classes} for b in "ZX"},
        qber={"Z": {"signal": 0.0105, "decoy": 0.038, "vacuum": 0.49}, "X": {"signal": 0.011, "decoy": None, "vacuum": 0.5}},
        qber_overall=0.0105, ec=EcFigures(sessions=2, blocks=0, round_trips=320, kept_bits=1_542_633,
                                          leaked_bits=165_991, efficiency_f=1.110),
        decoy=[BasisBounds(key_basis="Z", s0_lower=1200.0, s1_lower=700_000.0, phase_error_upper=0.032,
                           entropy_bits=400_000.0)],
        key_length_bits=259_590, verification_passed=True, verification_tag_bits=64, final_bits=259_590,
        stored_bits=162_816, key_blocks=39, epsilon_sec=1e-9, epsilon_cor=1e-12, duration_s=41.2)
    asyncio.run(publish_report(report, host="127.0.0.1", port=p.mqtt_port, station_id=STATION))

    # Levels: per peer, from the KME's own message; the empty peer is low (and its alarm up).
    wait_until(lambda: p.js("return document.querySelectorAll('#key-levels-table tr[data-peer]').length") == 2,
               60, "both peers' levels on the page")
    rows = p.js("return Object.fromEntries([...document.querySelectorAll('#key-levels-table tr[data-peer]')]"
                ".map(tr => [tr.dataset.peer, [...tr.cells].map(c => c.textContent)]))")
    assert rows["stellenbosch-sim"] == ["stellenbosch-sim", "32,768", "8", "0", "2", ""], rows
    assert rows["jinan1-sim"] == ["jinan1-sim", "0", "0", "0", "0", "LOW"], rows
    assert "low below 4,096 bits" in p.text("key-levels")
    wait_until(lambda: "keys.low.jinan1-sim" in p.text("alarms"), 30, "the low-store alarm")

    # The pass's key report: QBER, sifted bits, final key at a glance, every figure below.
    wait_until(lambda: MICIUS in p.text("key-reports"), 60, "the key report on the page")
    head = p.js("return document.querySelector('#key-reports .key-head').textContent")
    assert head == ("QBER 1.05 % · sifted 1,542,633 bits · final key 259,590 bits · stored 162,816 bits"), head
    figures = p.js("return Object.fromEntries([...document.querySelectorAll('#key-reports table.numbers tr')]"
                   ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))")
    assert figures["qber.Z.signal"] == "0.0105" and figures["qber.X.vacuum"] == "0.5000"
    assert figures["ec.kept_bits"] == "1,542,633" and figures["verification_passed"] == "yes"
    assert "qber.X.decoy" not in figures   # None: not a number, not shown

    # No key bit anywhere on the page: not the stored key, not the blocks handed out, in
    # any of the spellings a leak would take.
    blob = p.everything()
    packed = np.packbits(key_bits[: 10 * 4096]).tobytes()

    spellings = [packed[i:i + 16].hex() for i in range(0, len(packed), 512)]
    spellings += [base64.b64encode(packed[i:i + 12]).decode() for i in range(0, len(packed), 512)]
    spellings += ["".join(map(str, key_bits[i:i + 48])) for i in range(0, len(key_bits) - 48, 4096)]
    spellings += [b[:16].hex() for b in taken_packed]
    for s in spellings:
        assert s not in blob, f"key material {s[:8]}… reached the page"
    p.js("document.getElementById('sec-keys').scrollIntoView()")
    shot = artefact_dir() / "key-panel.png"
    p.driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
