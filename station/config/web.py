"""The operator's web view (``[web]``): where it listens, TLS, accounts.

The view is a process of its own (``qkd-station web``) that relays the station's MQTT
status model to browsers and publishes the page's commands as MQTT commands, so it can
never slow the control loop. Off loopback it needs TLS and accounts: a LAN must not see
the station without a login, nor read session cookies off the wire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from station.config.base import ConfigPath, Strict, is_loopback_host

#: scrypt cost of new hashes: 2^15 x 8 x 1 needs 32 MiB and ~0.1 s; slow for a guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_HASH_RE = re.compile(
    r"^scrypt\$(?P<n>\d{1,8})\$(?P<r>\d{1,3})\$(?P<p>\d{1,3})\$(?P<salt>[A-Za-z0-9+/=]{16,88})"
    r"\$(?P<hash>[A-Za-z0-9+/=]{43,88})$"
)
HASH_FORMAT = "scrypt$N$r$p$<salt base64>$<hash base64>"


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """A password hash for ``[[web.accounts]] password_hash`` (``qkd-station web passwd``)."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=256 * 1024 * 1024, dklen=32)
    return (f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    match = _HASH_RE.match(text)
    if match is None:
        raise ValueError(f"is not a password hash of the form {HASH_FORMAT}; make one with "
                         "`qkd-station web passwd` (plaintext passwords are not accepted)")
    n, r, p = int(match["n"]), int(match["r"]), int(match["p"])
    if n < 2**14 or n > 2**20 or n & (n - 1):
        raise ValueError("scrypt N must be a power of two in 2^14 .. 2^20")
    if not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt r must be 1..32 and p 1..16")
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["hash"], validate=True)
    except binascii.Error:
        raise ValueError("salt or hash is not valid base64") from None
    if len(digest) < 32:
        raise ValueError("the hash is shorter than 32 bytes")
    return n, r, p, salt, digest


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time comparison)."""
    n, r, p, salt, digest = _parse_hash(password_hash)
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                         maxmem=256 * 1024 * 1024, dklen=len(digest))
    return hmac.compare_digest(got, digest)


class WebAccount(Strict):
    """One login of the web view."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$", description="Login name.")
    role: Literal["dashboard", "operator"] = Field(
        description="dashboard: sees everything, commands nothing; operator: may also command."
    )
    password_hash: SecretStr = Field(
        description=f"{HASH_FORMAT} (`qkd-station web passwd` makes one); never the password."
    )

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: SecretStr) -> SecretStr:
        _parse_hash(value.get_secret_value())
        return value


class WebTlsConfig(Strict):
    """HTTPS for the web view."""

    cert_file: ConfigPath = Field(description="Server certificate chain (PEM).")
    key_file: ConfigPath = Field(description="Server private key (PEM).")


class WebConfig(Strict):
    """The operator's web view (docs/web.md)."""

    enabled: bool = Field(False, description="The daemon starts the web view as a child process.")
    host: str = Field("127.0.0.1", description="Listen address; anything but loopback needs tls and accounts.")
    port: int = Field(8080, ge=1, le=65535, description="Listen TCP port.")
    tls: WebTlsConfig | None = Field(None, description="HTTPS; absent means plain HTTP (loopback only).")
    accounts: list[WebAccount] = Field(default_factory=list, description="Logins; none means nobody may command.")
    anonymous_view: bool = Field(
        False, description="Show the page (read-only) without a login. Always true when there "
        "are no accounts (then the view must be on loopback)."
    )
    session_ttl_s: float = Field(12 * 3600.0, gt=0, le=7 * 86400,
                                 description="A login lasts this long (wall seconds).")
    login_failures_per_min: int = Field(
        5, ge=1, le=1000, description="Failed logins allowed per minute per client address and per account.")
    max_browsers: int = Field(64, ge=1, le=10000, description="Live feeds served at once; more get 503.")
    mqtt_username: str | None = Field(
        None, description="Broker user of the web view (an operator role, to publish commands); "
        "default mqtt.username.")
    mqtt_password_file: ConfigPath | None = Field(
        None, description="File whose first line is that user's broker password; default mqtt's.")
    command_timeout_s: float = Field(10.0, gt=0, le=120, description="Wait this long (wall) for a command's reply.")

    @model_validator(mode="after")
    def _check(self) -> WebConfig:
        names = [a.name for a in self.accounts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"account names must be unique: {', '.join(dupes)} given twice")
        if not is_loopback_host(self.host):
            missing = [what for what, ok in (("[web.tls]", self.tls is not None),
                                             ("[[web.accounts]]", bool(self.accounts))) if not ok]
            if missing:
                raise ValueError(
                    f"the web view listens on {self.host!r}, which is not loopback, so it needs "
                    f"{' and '.join(missing)}: without TLS a LAN reads logins and cookies off the "
                    "wire, without accounts anyone on it sees the station; use host = \"127.0.0.1\" "
                    "or configure both")
            if self.anonymous_view:
                raise ValueError(f"anonymous_view = true is for loopback only, not {self.host!r}")
        return self

    def account(self, name: str) -> WebAccount | None:
        return next((a for a in self.accounts if a.name == name), None)

    @property
    def view_needs_login(self) -> bool:
        """Whether the page and feed are behind a login."""
        return bool(self.accounts) and not self.anonymous_view
