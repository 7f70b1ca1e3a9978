"""Logins, sessions, CSRF tokens and login rate limiting of the web view.

Sessions live in this process's memory only (a restart logs everyone out, which is the
safe direction). Session expiry and the login limiter use the monotonic wall clock on
purpose: they are about real attackers and real people, not the station's (possibly
simulated) clock.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from station.config.web import WebAccount, WebConfig, hash_password, verify_password

#: At most this many scrypt checks at once (32 MiB each): a login flood cannot eat the PC.
HASHING_AT_ONCE = 2
MAX_SESSIONS = 1024


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    name: str
    role: str
    csrf: str
    expires_s: float

    @property
    def may_command(self) -> bool:
        return self.role == "operator"


class LoginLimiter:
    """Failed logins per key (client address, account name) in a sliding minute."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._failures: dict[str, deque[float]] = {}

    def _window(self, key: str, now_s: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now_s - 60.0:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> float:
        """Seconds until a login may be tried again (0: now)."""
        now_s = time.monotonic()
        wait = 0.0
        for key in keys:
            q = self._window(key, now_s)
            if len(q) >= self.per_min:
                wait = max(wait, q[0] + 60.0 - now_s)
        return wait

    def failed(self, *keys: str) -> None:
        now_s = time.monotonic()
        for key in keys:
            self._window(key, now_s).append(now_s)
        if len(self._failures) > 10_000:  # forget idle keys rather than grow without bound
            for key in [k for k, q in self._failures.items() if not q]:
                del self._failures[key]


class Sessions:
    """Logged-in browsers by session token."""

    def __init__(self, cfg: WebConfig) -> None:
        self.cfg = cfg
        self._by_token: dict[str, Session] = {}
        self.limiter = LoginLimiter(cfg.login_failures_per_min)
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        # A hash no password matches, checked for unknown names so they cost as much as
        # known ones (no telling which accounts exist by the answer's speed).
        self._dummy_hash = hash_password(secrets.token_hex(16))

    async def login(self, name: str, password: str) -> Session | None:
        """A new session when ``name``/``password`` match an account, else None."""
        account: WebAccount | None = self.cfg.account(name)
        stored = account.password_hash.get_secret_value() if account else self._dummy_hash
        async with self._hashing:
            ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or account is None:
            return None
        self._expire()
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.pop(next(iter(self._by_token)))
        session = Session(token=secrets.token_urlsafe(32), name=account.name, role=account.role,
                          csrf=secrets.token_urlsafe(32),
                          expires_s=time.monotonic() + self.cfg.session_ttl_s)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires_s <= time.monotonic():
            self._by_token.pop(token, None)
            return None
        account = self.cfg.account(session.name)
        if account is None or account.role != session.role:  # account removed or changed
            self._by_token.pop(token, None)
            return None
        return session

    def logout(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _expire(self) -> None:
        now_s = time.monotonic()
        for token in [t for t, s in self._by_token.items() if s.expires_s <= now_s]:
            del self._by_token[token]


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether the request carries this session's CSRF token (constant-time)."""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())
