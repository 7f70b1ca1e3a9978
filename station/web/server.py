"""The web view's HTTP side (aiohttp): the page, the live feed, logins and commands.

Routes (wire spec: docs/web.md):

- ``GET /`` and ``GET /static/<file>``: the page and its assets, all shipped in the package;
- ``GET /api/session``: who is logged in, the role and the CSRF token;
- ``POST /api/login``, ``POST /api/logout``;
- ``GET /api/feed``: Server-Sent Events, the status model (see :mod:`station.web.feed`);
- ``POST /api/cmd/<verb>``: an operator's command, published as the station's MQTT command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from station.config.root import StationConfig
from station.mqtt.messages import COMMANDS
from station.web.auth import Session, Sessions, csrf_ok
from station.web.feed import FeedHub
from station.web.link import BrokerUnavailable, MqttLink
from station.web.sky import TrackError, planned_track, sky_bodies

log = logging.getLogger("station.web")

COOKIE = "qkd_session"
CSRF_HEADER = "X-CSRF-Token"
#: Largest request body accepted (a command is ~100 bytes, a login ~200).
MAX_REQUEST_BYTES = 8 * 1024
#: Sun and Moon are recomputed when station time has moved this far (they move 0.25°/min).
SKY_EVERY_S = 30.0
#: A keep-alive comment on idle feeds, so proxies and phones keep the connection.
FEED_PING_S = 15.0
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

_KEY_VIEW: web.AppKey[WebView] = web.AppKey("view")


def _static(name: str) -> bytes:
    return resources.files("station.web").joinpath("static", name).read_bytes()


class WebView:
    """The hub, the MQTT link and the sessions of one web-view process."""

    def __init__(self, cfg: StationConfig) -> None:
        self.cfg = cfg
        self.sessions = Sessions(cfg.web)
        self.hub = FeedHub(cfg.topic_prefix, on_pass=self._want_track, on_time=self._time_moved)
        self.link = MqttLink(cfg, self.hub)
        self.assets = {name: _static(name) for name in STATIC_FILES}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tracks_asked: set[str] = set()
        self._sky_at: datetime | None = None
        self._sky_busy = False

    # ---------------------------------------------------------------- synthetic topics

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _want_track(self, pass_id: str) -> None:
        if pass_id in self._tracks_asked:
            return
        if len(self._tracks_asked) > 1000:   # months of passes: forget, they are in the past
            self._tracks_asked.clear()
        self._tracks_asked.add(pass_id)
        self._spawn(self._compute_track(pass_id), f"web-track-{pass_id}")

    async def _compute_track(self, pass_id: str) -> None:
        try:
            track = await asyncio.to_thread(planned_track, self.cfg, pass_id)
        except (TrackError, ValueError, OSError) as exc:
            log.warning("no planned track for the sky plot: %s", exc)
            return
        self.hub.add_synthetic("track", track, key=pass_id)

    def _time_moved(self, when: datetime) -> None:
        if self._sky_busy or (self._sky_at is not None and
                              abs(when - self._sky_at) < timedelta(seconds=SKY_EVERY_S)):
            return
        self._sky_busy = True
        self._sky_at = when
        self._spawn(self._compute_sky(when), "web-sky")

    async def _compute_sky(self, when: datetime) -> None:
        try:
            self.hub.add_synthetic("sky", await asyncio.to_thread(sky_bodies, self.cfg, when))
        except (ValueError, OSError) as exc:
            log.warning("no Sun/Moon positions for the sky plot: %s", exc)
        finally:
            self._sky_busy = False

    # ---------------------------------------------------------------- helpers

    def session_of(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def may_view(self, request: web.Request) -> bool:
        return not self.cfg.web.view_needs_login or self.session_of(request) is not None

    @property
    def secure(self) -> bool:
        return self.cfg.web.tls is not None

    async def start(self) -> None:
        self._spawn(self.link.run(), "web-mqtt")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers={"Cache-Control": "no-store"})


@web.middleware
async def refuse_cross_origin(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method == "POST":
        # Cross-site POSTs are refused before anything else (the SameSite cookie and the
        # CSRF token are the other two locks).
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return _error(403, "cross_origin", f"requests from {origin!r} are refused")
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "too_large", f"request bodies are limited to {MAX_REQUEST_BYTES} bytes")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, streamed ones included (a signal, not a middleware, for that)."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.app[_KEY_VIEW].secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":
        return _error(415, "bad_content_type", "send application/json")
    try:
        raw = await request.read()
        data = json.loads(raw)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "too_large", f"request bodies are limited to {MAX_REQUEST_BYTES} bytes")
    except (ValueError, RecursionError):
        return _error(400, "invalid_json", "the body is not JSON")
    if not isinstance(data, dict):
        return _error(400, "invalid_json", "the body must be a JSON object")
    return data


async def page(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    return web.Response(body=view.assets["index.html"], content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.Response(body=view.assets[name], content_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})


async def session_info(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    s = view.session_of(request)
    return web.json_response({
        "user": s.name if s else None, "role": s.role if s else None,
        "csrf": s.csrf if s else None, "may_command": bool(s and s.may_command),
        "may_view": view.may_view(request), "accounts": bool(view.cfg.web.accounts),
        "station_id": view.cfg.station_id,
    }, headers={"Cache-Control": "no-store"})


async def login(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    name, password = body.get("name"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or len(name) > 64 or len(password) > 1024:
        return _error(400, "invalid_request", "give name and password as text")
    peer = request.remote or "?"
    keys = (f"addr:{peer}", f"name:{name}")
    wait_s = view.sessions.limiter.blocked(*keys)
    if wait_s > 0:
        return web.json_response(
            {"error": {"code": "rate_limited", "message": f"too many failed logins; try again in {wait_s:.0f} s"}},
            status=429, headers={"Retry-After": str(max(1, round(wait_s)))})
    session = await view.sessions.login(name, password)
    if session is None:
        view.sessions.limiter.failed(*keys)
        log.warning("web login failed for %r from %s", name[:64], peer)
        return _error(401, "bad_login", "wrong name or password")
    log.info("web login: %s (%s) from %s", session.name, session.role, peer)
    resp = web.json_response({"user": session.name, "role": session.role, "csrf": session.csrf,
                              "may_command": session.may_command},
                             headers={"Cache-Control": "no-store"})
    resp.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", secure=view.secure,
                    path="/", max_age=int(view.cfg.web.session_ttl_s))
    return resp


async def logout(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    s = view.session_of(request)
    if s is not None and not csrf_ok(s, request.headers.get(CSRF_HEADER)):
        return _error(403, "csrf", f"missing or wrong {CSRF_HEADER} header")
    view.sessions.logout(request.cookies.get(COOKIE))
    resp = web.json_response({"user": None})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def feed(request: web.Request) -> web.StreamResponse:
    view = request.app[_KEY_VIEW]
    if not view.may_view(request):
        return _error(401, "login_required", "log in to see the station")
    if len(view.hub.browsers) >= view.cfg.web.max_browsers:
        return _error(503, "too_many_browsers", f"{view.cfg.web.max_browsers} feeds are already open")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    browser = view.hub.connect()
    try:
        await resp.write(b"retry: 2000\n\n" + b"".join(view.hub.snapshot()))
        while not browser.dropped:
            try:
                async with asyncio.timeout(FEED_PING_S):
                    frame = await browser.queue.get()
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            # Everything already queued goes out in one write: one syscall per burst.
            frames = [frame]
            while not browser.queue.empty() and len(frames) < 256:
                frames.append(browser.queue.get_nowait())
            await resp.write(b"".join(frames))
    except ConnectionResetError:
        pass   # the browser went away; aiohttp cancels us when it notices first
    finally:
        view.hub.disconnect(browser)
    return resp


async def command(request: web.Request) -> web.Response:
    view = request.app[_KEY_VIEW]
    s = view.session_of(request)
    if s is None:
        return _error(401, "login_required", "log in as an operator to command the station")
    if not csrf_ok(s, request.headers.get(CSRF_HEADER)):
        return _error(403, "csrf", f"missing or wrong {CSRF_HEADER} header")
    if not s.may_command:
        return _error(403, "forbidden", f"account {s.name!r} is a {s.role} account: it cannot command")
    verb = request.match_info["verb"]
    if verb not in COMMANDS:
        return _error(404, "unknown_verb", f"no command {verb[:40]!r}; known: {', '.join(COMMANDS)}")
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    body.pop("request_id", None)  # the web view chooses it, with the user in it
    try:
        reply = await view.link.command(verb, body, user=s.name)
    except BrokerUnavailable as exc:
        return _error(503, "broker_unavailable", str(exc))
    log.info("web command %s by %s: %s", verb, s.name,
             "no reply" if reply is None else ("ok" if reply.ok else reply.error.code.value if reply.error else "?"))
    if reply is None:
        return _error(504, "no_reply", f"no reply from the station within {view.cfg.web.command_timeout_s:g} s")
    return web.json_response({"reply": reply.model_dump(mode="json")}, headers={"Cache-Control": "no-store"})


def build_app(view: WebView) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[refuse_cross_origin])
    app.on_response_prepare.append(security_headers)
    app[_KEY_VIEW] = view
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/session", session_info)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/feed", feed)
    app.router.add_post("/api/cmd/{verb}", command)

    async def on_startup(_app: web.Application) -> None:
        await view.start()

    async def on_cleanup(_app: web.Application) -> None:
        await view.stop()

    async def on_shutdown(_app: web.Application) -> None:
        for browser in list(view.hub.browsers):   # end open feeds so shutdown is prompt
            browser.dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                browser.queue.put_nowait(b"")

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def ssl_context(cfg: StationConfig) -> ssl.SSLContext | None:
    tls = cfg.web.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


def url_of(cfg: StationConfig) -> str:
    host = cfg.web.host if ":" not in cfg.web.host else f"[{cfg.web.host}]"
    return f"{'https' if cfg.web.tls else 'http'}://{host}:{cfg.web.port}/"


async def serve(cfg: StationConfig, stop: asyncio.Event) -> None:
    """Serve the web view until ``stop`` is set."""
    view = WebView(cfg)
    runner = web.AppRunner(build_app(view), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.web.host, cfg.web.port, ssl_context=ssl_context(cfg))
        await site.start()
        log.info("web view on %s", url_of(cfg))
        await stop.wait()
    finally:
        await runner.cleanup()
