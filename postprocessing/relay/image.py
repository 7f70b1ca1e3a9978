"""A small picture for the relay demo, and one-time-pad encryption of its pixels.

The picture is drawn with numpy (a night sky, the Earth's limb, two rooftops and the
satellite between them) and written as an 8-bit RGB PNG with the standard library's
``zlib``; no imaging dependency. The demo encrypts the *pixels* (so the encrypted image is
still a viewable PNG, of noise) with a key of exactly as many bits.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def draw_relay_picture(width: int, height: int, seed: int = 2024) -> np.ndarray:
    """An ``height × width × 3`` uint8 picture: two stations, one satellite, two beams."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3), dtype=np.float64)
    # Night sky: deep blue at the top, lighter near the horizon.
    sky = (y / height)[..., None] * np.array([20.0, 40.0, 90.0]) + np.array([5.0, 5.0, 25.0])
    img[:] = sky
    stars = rng.random((height, width)) > 0.985
    img[stars] = [230, 230, 255]
    # The Earth's limb: a big circle whose top shows at the bottom of the picture.
    cx, cy, r = width / 2, height * 2.6, height * 1.95
    earth = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    img[earth] = [20, 70, 40]
    # Two rooftop stations on the limb, left (Beijing) and right (Stellenbosch).
    stations = []
    for fx in (0.18, 0.82):
        sx = fx * width
        sy = cy - np.sqrt(max(r**2 - (sx - cx) ** 2, 0.0))
        stations.append((sx, sy))
        box = (np.abs(x - sx) <= max(1, width // 40)) & (y >= sy - max(2, height // 16)) & (y <= sy)
        img[box] = [250, 200, 60]
    # The satellite, high in the middle, with a beam to each station.
    satx, saty = width / 2, height * 0.2
    for sx, sy in stations:
        for t in np.linspace(0.0, 1.0, 4 * max(width, height)):
            px, py = int(round(satx + t * (sx - satx))), int(round(saty + t * (sy - saty)))
            if 0 <= px < width and 0 <= py < height and int(t * 40) % 2 == 0:
                img[py, px] = [255, 60, 60]
    sat = (np.abs(x - satx) <= max(1, width // 32)) & (np.abs(y - saty) <= max(1, height // 48))
    img[sat] = [240, 240, 240]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an ``h × w × 3`` uint8 array as an 8-bit RGB PNG."""
    h, w, c = rgb.shape
    if c != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an h×w×3 uint8 image, got {rgb.shape} {rgb.dtype}")
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path.write_bytes(png)


def read_png(path: Path) -> np.ndarray:
    """Read back a PNG written by :func:`write_png` (8-bit RGB, filter 0 rows only)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            if (depth, colour) != (8, 2):
                raise ValueError(f"{path}: only 8-bit RGB PNGs are read here")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    if rows[:, 0].any():
        raise ValueError(f"{path}: only unfiltered rows are read here")
    return rows[:, 1:].reshape(h, w, 3).copy()


def one_time_pad(data: bytes, pad: bytes) -> bytes:
    """``data`` XOR ``pad``; the pad must be exactly as long (a one-time pad is never reused
    and never stretched)."""
    if len(pad) != len(data):
        raise ValueError(f"a one-time pad of {len(pad)} bytes for {len(data)} bytes of data")
    return np.bitwise_xor(np.frombuffer(data, np.uint8), np.frombuffer(pad, np.uint8)).tobytes()
