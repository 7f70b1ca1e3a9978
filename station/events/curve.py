"""CURVE keys of the event stream, and which endpoints are loopback.

Keys are kept in ZeroMQ's ZPL certificate files, the format of ``zmq.auth`` (pyzmq) and
czmq's ``zcert``, so a consumer in another language can use its usual tools:

* ``<name>.key`` holds the public key (give it to the other side);
* ``<name>.key_secret`` holds the public and the secret key (mode 0600, never copied).

Keys are Z85 text, 40 characters (32 bytes). ``qkd-station keygen`` writes a pair.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zmq
from zmq.utils import z85

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: Largest key file read: a certificate is ~300 bytes; anything bigger is not one.
_MAX_FILE_BYTES = 64 * 1024
_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')


class CurveKeyError(ValueError):
    """A key file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One side's CURVE keys, Z85-encoded. ``repr`` never shows the secret."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.decode()!r}, secret=<hidden>)"


def _check_z85(key: str, what: str, path: Path) -> bytes:
    raw = key.encode("ascii", "replace")
    if len(raw) != 40:
        raise CurveKeyError(f"{path}: the {what} key is {len(raw)} characters, a Z85 CURVE "
                            "key has 40")
    try:
        if len(z85.decode(raw)) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise CurveKeyError(f"{path}: the {what} key is not Z85 text") from None
    return raw


def _read_keys(path: Path) -> dict[str, bytes]:
    try:
        st = path.stat()
    except OSError as exc:
        raise CurveKeyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CurveKeyError(f"{path}: not a regular file")
    if st.st_size > _MAX_FILE_BYTES:
        raise CurveKeyError(f"{path}: {st.st_size} bytes is too big for a key certificate")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CurveKeyError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    keys: dict[str, bytes] = {}
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if m:
            keys[m.group(1)] = _check_z85(m.group(2), m.group(1), path)
    return keys


def load_public_key(path: Path | str) -> bytes:
    """The public key in a certificate file (``.key`` or ``.key_secret``)."""
    path = Path(path)
    keys = _read_keys(path)
    if "public" not in keys:
        raise CurveKeyError(f'{path}: no public-key = "..." line: not a ZeroMQ CURVE '
                            "certificate (make one with `qkd-station keygen`)")
    return keys["public"]


def load_keypair(path: Path | str) -> KeyPair:
    """Both keys from a secret certificate, which must be readable by its owner only."""
    path = Path(path)
    keys = _read_keys(path)
    if "secret" not in keys or "public" not in keys:
        raise CurveKeyError(f"{path}: no secret-key line: this is not a secret certificate "
                            f"(the {SECRET_SUFFIX} file `qkd-station keygen` writes)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CurveKeyError(f"{path}: a secret key readable by others (mode {mode:04o}); "
                            f"`chmod 600 {path}`")
    if zmq.curve_public(keys["secret"]) != keys["public"]:
        raise CurveKeyError(f"{path}: the public key does not belong to the secret key")
    return KeyPair(keys["public"], keys["secret"])


def load_allowed_keys(paths: list[Path]) -> dict[bytes, str]:
    """Public key -> where it came from, for each file or each ``*.key`` in a folder."""
    allowed: dict[bytes, str] = {}
    for p in paths:
        p = Path(p)
        files = sorted(p.glob(f"*{PUBLIC_SUFFIX}")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise CurveKeyError(f"{p}: a folder with no *{PUBLIC_SUFFIX} public key file")
        for f in files:
            allowed[load_public_key(f)] = str(f)
    return allowed


def write_keypair(folder: Path | str, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Make a new key pair: ``<folder>/<name>.key`` (public, 0644) and
    ``<name>.key_secret`` (0600, created with that mode so it is never readable by others)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise CurveKeyError(f"key name {name!r}: use letters, digits, '.', '_' and '-' "
                            "(at most 64, not starting with a dot)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # a label only, not domain time
    pub_path, sec_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    head = f"#   ****  Generated on {stamp} by qkd-station keygen  ****\n"
    body = {
        pub_path: (0o644, head + "#   ZeroMQ CURVE Public Certificate\n"
                   "#   Exchange securely, or use a secure mechanism to verify the contents\n"
                   "#   of this file after exchange. Store public certificates in your home\n"
                   "#   directory, in the .curve subdirectory.\n\n"
                   f'metadata\ncurve\n    public-key = "{public.decode()}"\n'),
        sec_path: (0o600, head + "#   ZeroMQ CURVE **Secret** Certificate\n"
                   "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                   f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
                   f'    secret-key = "{secret.decode()}"\n'),
    }
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    for path, (mode, text) in body.items():
        if overwrite and path.exists():
            path.unlink()  # a new file gets the mode below whatever the old one had
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise CurveKeyError(f"{path} exists already; not overwritten") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask
            f.write(text)
    return pub_path, sec_path


# -- endpoints ----------------------------------------------------------------------------
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\*|[0-9]{1,5})$")


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is a ZeroMQ endpoint the stream can bind (``tcp://host:port``,
    port ``*`` for any free one, or ``ipc://path``); else ``ValueError`` saying why."""
    if endpoint.startswith("ipc://"):
        if len(endpoint) == len("ipc://") or "\0" in endpoint:
            raise ValueError("ipc:// needs a socket path, e.g. ipc:///run/qkd-station/stream")
        return endpoint
    m = _TCP.match(endpoint)
    if m is None:
        raise ValueError("not a ZeroMQ endpoint: expected tcp://HOST:PORT (e.g. "
                         "tcp://127.0.0.1:5560) or ipc://PATH")
    port = m.group("port")
    if port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is not 1-65535")
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint`` (127.0.0.0/8, ::1, localhost, ipc)."""
    if endpoint.startswith("ipc://"):
        return True
    m = _TCP.match(endpoint)
    if m is None:
        return False
    host = m.group("host").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or a host name: may be reachable from outside
