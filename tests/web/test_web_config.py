"""``[web]``: hashes, never passwords; loopback unless TLS and accounts; check-config says so.
And the feed's filter on its own: what a browser may see of each topic."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postprocessing.relay.events import KeyRelayEvent
from station.config import ConfigError, load_config
from station.config.web import hash_password, verify_password
from station.web.feed import FeedHub, numeric_fields
from tests.conftest import REPO

SIM = REPO / "config" / "sim.toml"
HASH = hash_password("correct horse", n=2**14)


def test_hash_and_verify() -> None:
    assert verify_password("correct horse", HASH)
    assert not verify_password("correct hors", HASH)
    assert hash_password("x" * 8, n=2**14) != hash_password("x" * 8, n=2**14)  # salted


def _web(tmp_path: Path, **web: object) -> object:
    return load_config(SIM, overrides={"state_dir": str(tmp_path), "web": web})


def test_plaintext_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _web(tmp_path, accounts=[{"name": "op", "role": "operator", "password_hash": "hunter22"}])
    text = str(exc.value)
    assert "web.accounts[0].password_hash: (hidden)" in text and "qkd-station web passwd" in text
    assert "hunter22" not in text   # the value itself is a secret: never echoed


def test_lan_needs_tls_and_accounts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _web(tmp_path, host="0.0.0.0", accounts=[], anonymous_view=False)
    assert "[web.tls] and [[web.accounts]]" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        _web(tmp_path, host="192.168.1.20", anonymous_view=False, accounts=[],
             tls={"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")})
    assert "[[web.accounts]]" in str(exc.value) and "[web.tls]" not in str(exc.value).split("needs")[1]
    ok = _web(tmp_path, host="0.0.0.0", anonymous_view=False,
              tls={"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")},
              accounts=[{"name": "op", "role": "operator", "password_hash": HASH}])
    assert ok.web.view_needs_login  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="anonymous_view"):
        _web(tmp_path, host="0.0.0.0", anonymous_view=True,
             tls={"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")},
             accounts=[{"name": "op", "role": "operator", "password_hash": HASH}])


def test_check_config_refuses_a_lan_bind_without_tls(tmp_path: Path) -> None:
    cfg = tmp_path / "lan.toml"
    text = SIM.read_text().replace('host = "127.0.0.1"\nport = 18880\nanonymous_view = true',
                                   'host = "0.0.0.0"\nport = 18880\nanonymous_view = false')
    assert 'host = "0.0.0.0"' in text
    cfg.write_text(text.replace('"elements"', json.dumps(str(REPO / "config" / "elements"))))
    res = subprocess.run([sys.executable, "-m", "station", "check-config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "web: " in res.stderr and "not loopback" in res.stderr and "[web.tls]" in res.stderr


def test_passwd_command_makes_a_hash_that_loads(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "station", "web", "passwd", "--stdin"],
                         input="a long password\n", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert line.startswith("scrypt$") and "a long password" not in line
    assert verify_password("a long password", line)
    _web(tmp_path, accounts=[{"name": "op", "role": "operator", "password_hash": line}])
    short = subprocess.run([sys.executable, "-m", "station", "web", "passwd", "--stdin"],
                           input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 2


# ------------------------------------------------------------------ the feed's filter

P = "qkd/s1"


def _frames(hub: FeedHub) -> str:
    return b"".join(hub.snapshot()).decode()


def test_only_model_topics_and_fields_pass() -> None:
    hub = FeedHub(P)
    assert not hub.take(f"{P}/secret", b'{"seed": 42}')
    assert not hub.take("qkd/other/state", b"{}")
    assert not hub.take(f"{P}/reply/r1", b'{"ok": true}')
    assert not hub.take(f"{P}/status", b"pwned <script>")
    assert hub.take(f"{P}/status", b"online")
    mount = {"time": "2016-12-19T16:45:40.000Z", "actual_az_deg": 1, "actual_el_deg": 2,
             "moving": False, "parked": True}
    assert hub.take(f"{P}/mount", json.dumps(mount).encode())
    assert not hub.take(f"{P}/mount", json.dumps({**mount, "seed": 77}).encode())
    assert not hub.take(f"{P}/passes/../../x/summary", b"{}")
    assert not hub.take(f"{P}/mount", b"[" * 100_000)
    out = _frames(hub)
    assert '"topic":"mount"' in out and "seed" not in out and "secret" not in out
    assert hub.stats.refused_topic == 4 and hub.stats.refused_payload >= 3


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=30))
def test_key_reports_keep_only_plain_numbers(data: object) -> None:
    try:
        raw = json.dumps(data).encode()
    except ValueError:
        return
    out = numeric_fields(raw)
    if not isinstance(data, dict):
        assert out is None
        return
    assert out is not None and len(out) <= 64
    for name, value in out.items():
        assert isinstance(value, int | float | bool) and name.count(".") <= 2
        assert not isinstance(value, int) or isinstance(value, bool) or abs(value) <= 2**53
        assert value == value and value not in (float("inf"), float("-inf"))


def test_a_slow_browser_is_cut_off_not_the_others() -> None:
    hub = FeedHub(P)
    slow, fast = hub.connect(), hub.connect()
    for i in range(5000):
        hub.take(f"{P}/status", b"online" if i % 2 else b"offline")
        while not fast.queue.empty():
            fast.queue.get_nowait()
    assert slow.dropped and not fast.dropped and slow not in hub.browsers
    assert hub.stats.browsers_cut == 1


TRANSITION = {"time": "2016-12-19T16:46:43.000Z", "pass_id": "41731-20161219T164844Z", "satellite": "MICIUS",
              "from_phase": "idle", "to_phase": "prepare", "mode": "auto"}


def _payloads(hub: FeedHub, topic: str) -> list[dict[str, object]]:
    out = []
    for frame in hub.snapshot():
        text = frame.decode()
        if text.startswith("event: msg"):
            msg = json.loads(text.split("data: ", 1)[1])
            if msg["topic"] == topic:
                out.append(msg["payload"])
    return out


def test_transitions_are_read_by_kind() -> None:
    hub = FeedHub(P)
    # An older station's phase change (no kind, no reason), a newer one's, and a relay event.
    assert hub.take(f"{P}/transitions", json.dumps(TRANSITION).encode())
    assert hub.take(f"{P}/transitions", json.dumps({
        **TRANSITION, "from_phase": "prepare", "to_phase": "track", "kind": "phase",
        "reason": "AOS: the satellite rose above the mask", "future_field": "dropped"}).encode())
    relay = json.loads(KeyRelayEvent(
        time=datetime(2016, 12, 19, 17, 10, tzinfo=UTC), station_id="stellenbosch-sim", step="refused",
        role="receiving", partner="beijing-sim", satellite="jinan-1-sim", request_id=str(uuid.uuid4()),
        reason="announcement tag did not verify").model_dump_json())
    assert hub.take(f"{P}/transitions", json.dumps({**relay, "key_hex": "deadbeef"}).encode())
    # Unknown kinds, a kind that is no string, a relay event without its time: refused.
    for bad in ({**TRANSITION, "kind": "teleport"}, {**TRANSITION, "kind": 7}, {"kind": "relay"},
                {**relay, "partner": "../../etc"}, {**relay, "step": "teleported"}):
        assert not hub.take(f"{P}/transitions", json.dumps(bad).encode()), bad
    got = _payloads(hub, "transitions")
    assert [t["kind"] for t in got] == ["phase", "phase", "relay"]
    assert got[0]["reason"] == "" and got[1]["reason"].startswith("AOS")
    assert got[2] == {"kind": "relay", "time": "2016-12-19T17:10:00.000Z", "step": "refused", "role": "receiving",
                      "partner": "beijing-sim", "satellite": "jinan-1-sim", "key_ids": 0, "bits": 0,
                      "reason": "announcement tag did not verify"}
    text = _frames(hub)
    assert "future_field" not in text and "deadbeef" not in text and "teleport" not in text
    # A reason is a sentence: a huge one is cut, not relayed whole.
    assert hub.take(f"{P}/transitions", json.dumps({**TRANSITION, "reason": "x" * 100_000}).encode())
    assert len(_payloads(hub, "transitions")[-1]["reason"]) == 500


def test_key_levels_are_the_kme_model_re_serialised() -> None:
    from postprocessing.kme.levels import KeyLevels, PeerLevel

    levels = KeyLevels(time="2016-12-19T17:20:00Z", station_id="xinglong-sim", low_store_bits=4096, peers=[
        PeerLevel(peer="stellenbosch-sim", available_bits=162816, available_blocks=10, reserved_blocks=1,
                  consumed_blocks=2, low=False)])
    hub = FeedHub(P)
    body = json.loads(levels.model_dump_json())
    body["peers"][0]["key_b64"] = "SECRETKEYMATERIAL"    # whatever a producer adds is dropped
    assert hub.take(f"{P}/keys/levels", json.dumps(body).encode())
    (got,) = _payloads(hub, "keys/levels")
    assert got["peers"] == [{"peer": "stellenbosch-sim", "available_bits": 162816, "available_blocks": 10,
                             "reserved_blocks": 1, "consumed_blocks": 2, "low": False}]
    assert got["low_store_bits"] == 4096 and "SECRETKEYMATERIAL" not in _frames(hub)
    # Not the model (the old flat numbers, a negative count, a key where a count goes): refused.
    for bad in ({"peer_b": {"available_bits": 1}}, {**body, "peers": [{**body["peers"][0], "available_bits": -1}]},
                {**body, "peers": [{**body["peers"][0], "available_bits": "0110"}]}):
        assert not hub.take(f"{P}/keys/levels", json.dumps(bad).encode())
