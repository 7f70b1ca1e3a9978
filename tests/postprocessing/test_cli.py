"""``qkd-station keys …`` as a user runs it (subprocesses, real files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO
from tests.postprocessing.conftest import station_toml


def _keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station", "keys", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_distill_without_a_pool_says_how_to_make_one(tmp_path: Path) -> None:
    toml = station_toml(tmp_path, satellite_endpoint="tcp://127.0.0.1:1")
    r = _keys("distill", str(tmp_path / "x.arrows"), "--config", str(toml))
    assert r.returncode == 2 and "keys init-auth" in r.stderr


def test_provision_list_and_show_never_print_key_bits(tmp_path: Path) -> None:
    from postprocessing.keystore import KeyStore

    sat = tmp_path / "sat.toml"
    sat.write_text(f'name = "micius-sim"\nseed = 2016\nstate_dir = "{tmp_path / "sat"}"\n'
                   f'[[stations]]\nname = "xinglong-sim"\nauth_pool = "{tmp_path / "sat" / "pool.json"}"\n')
    toml = station_toml(tmp_path, satellite_endpoint="tcp://127.0.0.1:1", satellite_config=sat)
    r = _keys("init-auth", "--config", str(toml))
    assert r.returncode == 0, r.stderr
    ground_pool = tmp_path / "state" / "keys" / "auth-pool.json"
    assert ground_pool.exists() and (tmp_path / "sat" / "pool.json").exists()
    assert ground_pool.stat().st_mode & 0o777 == 0o600
    assert ground_pool.read_bytes() == (tmp_path / "sat" / "pool.json").read_bytes()
    again = _keys("init-auth", "--config", str(toml))
    assert again.returncode == 0 and "already exist" not in again.stderr  # idempotent, quiet
    bits = np.random.default_rng(5).integers(0, 2, 512, dtype=np.uint8)
    with KeyStore(tmp_path / "state" / "keys" / "store") as store:
        blocks = store.deposit("micius-sim", "41731-20161219T164844Z", bits)
    listing = _keys("list", "--config", str(toml), "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert {r["key_id"] for r in rows} == {str(b.key_id) for b in blocks}
    show = _keys("show", str(blocks[0].key_id), "--config", str(toml))
    assert show.returncode == 0 and json.loads(show.stdout)["size_bits"] == 256
    packed = np.packbits(bits).tobytes()
    for text in (listing.stdout, show.stdout):
        assert packed.hex()[:16] not in text and "".join(map(str, bits[:64])) not in text
    assert _keys("show", "not-a-uuid", "--config", str(toml)).returncode == 1


def test_satellite_with_a_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "sat.toml"
    bad.write_text('name = "Micius!"\n')
    r = _keys("satellite", "-s", str(bad))
    assert r.returncode == 2 and "seed" in r.stderr and "name" in r.stderr
