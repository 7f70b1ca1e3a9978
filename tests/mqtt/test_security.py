"""Real Mosquitto with the shipped config/mosquitto/ ACL and config, TLS with certificates
made here (openssl), passwords made by mosquitto_passwd: a dashboard cannot command the
station (the broker drops its publish; no reply, no motion) while an operator can."""

from __future__ import annotations

import asyncio
import json
import re

import aiomqtt
import pytest

from station.mqtt.service import MqttService
from tests.conftest import REPO
from tests.mqtt.helpers import CommandedStation, collector, make_cfg
from tests.mqtt.secure import PASSWORDS, STATION, make_pki, station_cfg, tls_client


def test_shipped_acl_has_the_three_roles():
    acl = (REPO / "config/mosquitto/acl").read_text()
    users = re.findall(r"^user (\S+)", acl, re.M)
    assert users == ["xinglong", "operator", "dashboard"]
    dashboard = acl.split("user dashboard", 1)[1]
    assert "write" not in dashboard  # read-only


async def test_dashboard_cannot_command_operator_can(secure_broker, tmp_path, clock, station: CommandedStation):
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki)
    prefix = f"qkd/{STATION}"
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()

        async with collector(**tls_client(broker, pki, "dashboard"), topics=(f"{prefix}/#",)) as dash, \
                collector(**tls_client(broker, pki, "operator"), topics=(f"{prefix}/reply/#",)) as op:
            # The dashboard reads the station's tree ...
            await dash.wait_for(lambda: dash.payloads(f"{prefix}/status"))
            assert dash.payloads(f"{prefix}/status") == [b"online"]
            # ... but its commands and a forged status never get through.
            await dash.client.publish(f"{prefix}/cmd/goto",
                                      json.dumps({"request_id": "dash-1", "az_deg": 90, "el_deg": 45}),
                                      qos=1)
            await dash.client.publish(f"{prefix}/status", b"offline", qos=1, retain=True)
            # The operator can: set manual mode, then move the telescope.
            for rid, verb, args in (("op-1", "set_mode", {"mode": "manual"}),
                                    ("op-2", "goto", {"az_deg": 45.0, "el_deg": 30.0})):
                await op.client.publish(f"{prefix}/cmd/{verb}",
                                        json.dumps({"request_id": rid, **args}), qos=1)
                await op.wait_for(lambda rid=rid: op.payloads(f"{prefix}/reply/{rid}"))
                assert op.json(f"{prefix}/reply/{rid}")[0]["ok"] is True

        assert station.calls == [("set_mode", "manual"), ("goto", (45.0, 30.0))]
        assert [(c.kind, c.az_deg, c.el_deg) for c in station.mount.commands] == [("slew", 45.0, 30.0)]
        assert service.dispatcher.stats.received == 2
        assert dash.payloads(f"{prefix}/reply/dash-1") == []
        assert dash.payloads(f"{prefix}/status") == [b"online"]


@pytest.mark.parametrize(("user", "password"), [(None, None), ("operator", "wrong"), ("intruder", "x")])
async def test_anonymous_and_bad_passwords_are_refused(secure_broker, user, password):
    broker, pki = secure_broker
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(**tls_client(broker, pki, user, password or "")):
            pass


async def test_a_broker_certificate_from_another_ca_is_refused(secure_broker, tmp_path, clock):
    broker, _ = secure_broker
    other = make_pki(tmp_path, ca_only=True)  # a CA the broker's certificate was not signed by
    cfg = make_cfg(tmp_path, "127.0.0.1", broker.port, station_id=STATION, username=STATION,
                   password=PASSWORDS[STATION], tls={"ca_file": other.ca})
    async with MqttService(cfg, clock) as service:
        for _ in range(200):
            if service.stats.connect_failures:
                break
            await asyncio.sleep(0.02)
        assert service.stats.connect_failures >= 1 and not service.connected
        assert "certificate" in service.stats.last_error.lower()
