"""``qkd-station cmd VERB [key=value ...]``: send one command to a station, print the reply.

    qkd-station cmd set_mode mode=manual
    qkd-station cmd goto az_deg=120 el_deg=45
    qkd-station cmd skip_pass pass_id=41731-20161219T164844Z
    qkd-station cmd abort_pass reason="clouds"

Values are read as JSON when they parse (numbers, true/false), else as text. Exit status:
0 done, 1 refused or invalid (the station's reason is printed), 3 no broker, 4 no reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import aiomqtt

from station.cli._common import add_config_argument
from station.cli.monitor import add_credentials_arguments, settings_from_args
from station.mqtt.client import ClientSettings
from station.mqtt.messages import COMMANDS, CommandReply
from station.mqtt.service import client_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cmd", help="send a command to a station over MQTT and print the reply",
        description=f"Verbs: {', '.join(COMMANDS)}. Arguments as key=value (see docs/mqtt.md).",
    )
    p.add_argument("verb", metavar="VERB", help=f"one of: {', '.join(COMMANDS)}")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE", help="command arguments, e.g. az_deg=120")
    add_config_argument(p)
    p.add_argument("--station", metavar="ID", help="station id (default: station_id of the config)")
    add_credentials_arguments(p)
    p.add_argument("--timeout-s", type=float, default=10.0, metavar="N",
                   help="wait this many seconds for the reply (default 10)")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=run)


def parse_args_list(items: list[str]) -> dict[str, Any]:
    """``["az_deg=120", "reason=clouds"]`` -> ``{"az_deg": 120, "reason": "clouds"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


async def send_command(settings: ClientSettings, verb: str, args: dict[str, Any], *,
                       timeout_s: float, request_id: str | None = None) -> tuple[CommandReply | None, str | None]:
    """Publish one command and wait for its reply; (reply or None on timeout, station status)."""
    request_id = request_id or f"cli-{uuid.uuid4().hex[:16]}"
    prefix = settings.topic_prefix
    reply_topic = f"{prefix}/reply/{request_id}"
    status: str | None = None
    async with aiomqtt.Client(**client_kwargs(settings.mqtt, None)) as client:
        await client.subscribe(reply_topic, qos=1)
        await client.subscribe(f"{prefix}/status", qos=1)
        await client.publish(f"{prefix}/cmd/{verb}", json.dumps({"request_id": request_id, **args}),
                             qos=1, retain=False)
        try:
            async with asyncio.timeout(timeout_s):
                async for msg in client.messages:
                    if msg.topic.value == f"{prefix}/status":
                        status = bytes(msg.payload).decode(errors="replace")  # type: ignore[arg-type]
                    elif msg.topic.value == reply_topic:
                        return CommandReply.model_validate_json(bytes(msg.payload)), status  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return None, status


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        payload = parse_args_list(args.args)
    except ValueError as exc:
        print(f"qkd-station cmd: {exc}", file=sys.stderr)
        return 2
    if args.verb not in COMMANDS:
        # The station would say the same; saying it here saves a round trip.
        print(f"qkd-station cmd: unknown verb {args.verb!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        reply, status = asyncio.run(send_command(settings, args.verb, payload, timeout_s=args.timeout_s))
    except aiomqtt.MqttError as exc:
        print(f"cannot reach the MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}",
              file=sys.stderr)
        return 3
    if reply is None:
        hint = ("the station is offline" if status == "offline" else
                "is the station running, and may your account command it (ACL)?")
        print(f"no reply from {settings.station_id} within {args.timeout_s:g} s: {hint}", file=sys.stderr)
        return 4
    if args.json:
        print(reply.model_dump_json(indent=2))
    elif reply.ok:
        print(f"ok: {args.verb} {json.dumps(reply.result or {})}")
    else:
        assert reply.error is not None
        print(f"error [{reply.error.code.value}]: {reply.error.message}")
    return 0 if reply.ok else 1
