"""The ETSI GS QKD 014 HTTPS server: aiohttp with stdlib ``ssl`` mutual TLS.

The TLS handshake requires a client certificate chaining to ``tls.client_ca``; a
certificate from any other CA never gets past the handshake. After it, the SAE is the
configured SAE whose ``certificate_sha256`` (of the DER certificate) or ``subject_cn``
matches; a valid certificate that matches no SAE gets 401 and nothing else.

Hostile input: bodies above ``max_request_bytes`` are refused before they are read,
JSON nested deeper than ``max_json_depth`` or with wrong types is a 400, every error is the
spec's ``{"message", "details"}`` body. The server runs in a process of its own
(``qkd-station kme``) or in any event loop that is not the station daemon's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ValidationError

from postprocessing.keystore import KeyStore
from postprocessing.kme.config import KmeConfig
from postprocessing.kme.levels import LevelsPublisher
from postprocessing.kme.models import ErrorBody, KeyIdItem, KeyIds, KeyRequest
from postprocessing.kme.service import DeliveryError, KeyDelivery

log = logging.getLogger("postprocessing.kme")

_SAE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_INT_RE = re.compile(r"^[0-9]{1,9}$")
API = "/api/v1/keys"
_SAE_KEY: web.RequestKey[str] = web.RequestKey("sae", str)
DELIVERY: web.AppKey[KeyDelivery] = web.AppKey("delivery", KeyDelivery)


def server_ssl_context(config: KmeConfig) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate from ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls.certificate, config.tls.private_key)
    ctx.load_verify_locations(cafile=config.tls.client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _error(status: int, message: str, details: list[dict] | None = None) -> web.Response:
    body = ErrorBody(message=message, details=details).model_dump(exclude_none=True)
    return web.json_response(body, status=status)


def _ok(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(exclude_none=True))


class _Identify:
    """Maps a TLS peer certificate to a configured SAE ID."""

    def __init__(self, config: KmeConfig):
        self.by_fp = {s.certificate_sha256: s.sae_id for s in config.saes if s.certificate_sha256}
        self.by_cn = {s.subject_cn: s.sae_id for s in config.saes
                      if s.subject_cn and not s.certificate_sha256}

    def __call__(self, request: web.Request) -> str | None:
        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport else None
        if sslobj is None:
            return None
        der = sslobj.getpeercert(binary_form=True)
        if not der:
            return None
        sae = self.by_fp.get(hashlib.sha256(der).hexdigest())
        if sae is not None:
            return sae
        cert = sslobj.getpeercert() or {}
        for rdn in cert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName" and value in self.by_cn:
                    return self.by_cn[value]
        return None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of decoded JSON, iteratively (never recursion on hostile input)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def build_app(config: KmeConfig, store: KeyStore) -> web.Application:
    """The aiohttp application serving ETSI 014 from ``store``."""
    identify = _Identify(config)
    delivery = KeyDelivery(config, store)
    routes = _Routes(config, delivery)
    app = web.Application(middlewares=[_errors_middleware(identify, delivery)],
                          client_max_size=config.max_request_bytes)
    app[DELIVERY] = delivery
    app.router.add_get(API + "/{slave_SAE_ID}/status", routes.status)
    app.router.add_route("GET", API + "/{slave_SAE_ID}/enc_keys", routes.enc_keys)
    app.router.add_route("POST", API + "/{slave_SAE_ID}/enc_keys", routes.enc_keys)
    app.router.add_route("GET", API + "/{master_SAE_ID}/dec_keys", routes.dec_keys)
    app.router.add_route("POST", API + "/{master_SAE_ID}/dec_keys", routes.dec_keys)
    return app


def _errors_middleware(identify: _Identify, delivery: KeyDelivery) -> Middleware:
    """The middleware that names the calling SAE and turns every failure into a spec error body."""

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            sae = identify(request)
            if sae is None:
                delivery.counters.requests_refused += 1
                log.warning("refused %s %s: client certificate not registered",
                            request.method, request.path[:100])
                return _error(401, "client certificate is not registered for any SAE")
            request[_SAE_KEY] = sae
            return await handler(request)
        except DeliveryError as exc:
            delivery.counters.requests_refused += 1
            log.warning("refused %s %s (%s): %d %s", request.method, request.path[:100],
                        request.get(_SAE_KEY), exc.status, exc.message)
            return _error(exc.status, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(400 if exc.status == 413 else exc.status, exc.reason)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path[:100])
            return _error(503, "internal error of the KME")

    return errors


class _Routes:
    """The ETSI 014 handlers: check the request's parameters and body, then ask ``delivery``."""

    def __init__(self, config: KmeConfig, delivery: KeyDelivery) -> None:
        self._config = config
        self._delivery = delivery

    async def status(self, request: web.Request) -> web.Response:
        slave = _sae_param(request, "slave_SAE_ID")
        return _ok(await self._delivery.status(request[_SAE_KEY], slave))

    async def enc_keys(self, request: web.Request) -> web.Response:
        slave = _sae_param(request, "slave_SAE_ID")
        if request.method == "POST":
            req = await _read_json(request, KeyRequest, self._config)
        else:
            req = KeyRequest(number=_int_query(request, "number"), size=_int_query(request, "size"))
        return _ok(await self._delivery.enc_keys(request[_SAE_KEY], slave, req))

    async def dec_keys(self, request: web.Request) -> web.Response:
        master = _sae_param(request, "master_SAE_ID")
        if request.method == "POST":
            req = await _read_json(request, KeyIds, self._config)
        else:
            ids = request.query.getall("key_ID", [])
            if len(ids) != 1 or len(ids[0]) > 64:
                raise DeliveryError(400, "GET dec_keys takes exactly one key_ID query parameter")
            req = KeyIds(key_IDs=[KeyIdItem(key_ID=ids[0])])
        return _ok(await self._delivery.dec_keys(request[_SAE_KEY], master, req))


async def _read_json(request: web.Request, model: type[BaseModel], config: KmeConfig) -> Any:
    """The request body as ``model``: size, JSON, depth, object and schema checks, in that order."""
    if request.content_length is not None and request.content_length > config.max_request_bytes:
        raise DeliveryError(400, f"request body exceeds {config.max_request_bytes} bytes")
    try:
        raw = await request.read()  # capped by client_max_size, chunked bodies too
    except web.HTTPRequestEntityTooLarge:
        raise DeliveryError(400, f"request body exceeds {config.max_request_bytes} bytes") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DeliveryError(400, f"request body is not valid JSON: {str(exc)[:120]}") from None
    if _depth(data, config.max_json_depth) > config.max_json_depth:
        raise DeliveryError(400, f"request JSON is nested deeper than {config.max_json_depth}")
    if not isinstance(data, dict):
        raise DeliveryError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]}
                   for e in exc.errors(include_url=False, include_input=False)[:10]]
        raise DeliveryError(400, f"invalid {model.__name__} body", details) from None


def _sae_param(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _SAE_RE.fullmatch(value):
        raise DeliveryError(400, f"{name} {value[:64]!r} is not a valid SAE ID")
    return value


def _int_query(request: web.Request, name: str) -> int | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) > 1 or not _INT_RE.fullmatch(values[0]):
        raise DeliveryError(400, f"query parameter {name} must be one integer 0..999999999")
    return int(values[0])


class KmeServer:
    """A running KME: ``async with KmeServer(config) as kme: kme.port``."""

    def __init__(self, config: KmeConfig, store: KeyStore | None = None):
        self.config = config
        self._own_store = store is None
        self.store = store or KeyStore(config.store_dir)
        self.app = build_app(config, self.store)
        self._runner: web.AppRunner | None = None
        self.port: int = config.port
        self.levels: LevelsPublisher | None = None
        self._levels_stop = asyncio.Event()
        self._levels_task: asyncio.Task[None] | None = None

    @property
    def delivery(self) -> KeyDelivery:
        return self.app[DELIVERY]

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port,
                           ssl_context=server_ssl_context(self.config), backlog=256,
                           reuse_port=self.config.reuse_port or None)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        log.info("KME %s serving ETSI 014 on https://%s:%d", self.config.kme_id,
                 self.config.host, self.port)
        if self.config.mqtt is not None:
            self.levels = LevelsPublisher(self.store, self.config.mqtt)
            self.delivery.on_change = self.levels.changed.set
            self._levels_stop.clear()
            self._levels_task = asyncio.create_task(self.levels.run(self._levels_stop),
                                                    name="kme-levels")

    async def stop(self) -> None:
        if self._levels_task is not None:
            self._levels_stop.set()
            await self._levels_task
            self._levels_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.delivery.close)
        if self._own_store:
            self.store.close()

    async def __aenter__(self) -> KmeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
