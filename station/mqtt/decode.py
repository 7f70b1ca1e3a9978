"""Reading a command off the wire: the checks of step 2 of ``station.mqtt.commands``.

:func:`decode_request` turns a payload into its verb's request model or raises
:class:`Reject` with the error code, a message that names the field, value and reason,
and the request id when it could be read. :func:`response_topic_problem` says why an
MQTT 5 response topic cannot be used. Both are pure: no state, no clock, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from station.mqtt.limits import (
    MAX_COMMAND_BYTES,
    MAX_CORRELATION_BYTES,
    MAX_ECHO_CHARS,
    MAX_JSON_DEPTH,
    MAX_RESPONSE_TOPIC_BYTES,
    brief,
    clip,
    json_depth_exceeds,
    topic_problem,
)
from station.mqtt.messages import COMMANDS, REQUEST_ID_RE, CommandRequest, ErrorCode


class Reject(Exception):
    """This request gets an error reply (code, message, request id if known)."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details or []


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_request(verb: str, payload: bytes) -> CommandRequest:
    """The request, strictly validated, or :class:`Reject` saying what is wrong."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise Reject(ErrorCode.INVALID_REQUEST,
                      f"payload is {len(payload)} bytes; a command is at most {MAX_COMMAND_BYTES} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(ErrorCode.INVALID_JSON, f"payload is not UTF-8 text: {exc.reason} at byte "
                      f"{exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Reject(ErrorCode.INVALID_JSON,
                      f"payload is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, and a number with too many digits
        raise Reject(ErrorCode.INVALID_JSON, f"payload is not valid JSON: {clip(str(exc))}") from None
    if not isinstance(data, dict):
        raise Reject(ErrorCode.INVALID_JSON,
                      f"payload must be a JSON object with a request_id, got {type(data).__name__}")
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise Reject(ErrorCode.INVALID_REQUEST,
                      f"request_id: {_show(brief(request_id))}: required, 1-64 characters of "
                      "A-Z a-z 0-9 . _ : - starting with a letter or digit")
    if json_depth_exceeds(data):
        raise Reject(ErrorCode.INVALID_JSON,
                      f"payload is nested too deeply (at most {MAX_JSON_DEPTH} levels)", request_id)
    model = COMMANDS.get(verb)
    if model is None:
        raise Reject(ErrorCode.UNKNOWN_VERB,
                      f"unknown command {brief_verb(verb)!r}; known: {', '.join(sorted(COMMANDS))}",
                      request_id)
    try:
        # Strict, from the JSON text: true is not a number, "5" is not a number.
        return model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        details = [
            {"field": brief(".".join(str(p) for p in e["loc"])) or "(payload)",
             "value": brief(e.get("input")) if e["type"] != "missing" else None,
             "reason": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False)[:8]
        ]
        text = "; ".join(
            f"{d['field']}: {'(missing)' if d['value'] is None else _show(d['value'])}: {d['reason']}"
            for d in details
        )
        raise Reject(ErrorCode.INVALID_REQUEST, f"invalid {verb} request: {text}", request_id,
                      jsonable(details)) from None


def response_topic_problem(topic: str | None, correlation: bytes | None, prefix: str | None) -> str | None:
    """Why an MQTT 5 response topic (and its correlation data) cannot be used, or None.

    ``prefix`` (``<root>/<id>/reply/``) is where a response topic must point."""
    if topic is None:
        return None
    problem = topic_problem(topic) if isinstance(topic, str) else "not text"
    if problem is None and len(topic.encode()) > MAX_RESPONSE_TOPIC_BYTES:
        problem = f"longer than {MAX_RESPONSE_TOPIC_BYTES} bytes"
    if problem is None and prefix is not None and (not topic.startswith(prefix) or topic == prefix):
        problem = f"not under this station's {prefix}"
    if problem is not None:
        return (f"response topic {_show(brief(topic))}: {problem}; use a topic name under "
                f"{prefix or 'reply/'} without wildcards")
    if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
        return f"correlation data is {len(correlation)} bytes; at most {MAX_CORRELATION_BYTES}"
    return None


def brief_verb(verb: str) -> str:
    """The verb as a reply may echo it: cut to a few characters, escaped."""
    return verb if len(verb) <= MAX_ECHO_CHARS and verb.isprintable() else clip(verb, MAX_ECHO_CHARS)


def _show(value: Any) -> str:
    return repr(value)


def jsonable(value: Any) -> Any:
    """Make a result or detail safe for JSON (enums, datetimes, numpy scalars -> plain)."""
    return json.loads(json.dumps(value, default=str))
