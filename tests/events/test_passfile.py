"""Pass files: what goes in comes out, a cut file reads back every complete batch."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.events import PassHeader, read_pass_file, recover_interrupted
from station.events.passfile import (
    EOS,
    PassFileWriter,
    batch_metadata,
    columns_of,
    scan_pass_file,
)
from tests.events.conftest import header, make_batches, same_events


def write_file(path: Path, batches: list, hdr: PassHeader | None = None, *, close: bool = True
               ) -> list[tuple[int, int]]:
    w = PassFileWriter(path, (hdr or header()).schema_metadata(), compression="lz4")
    spans = []
    for i, b in enumerate(batches):
        ts, ch = columns_of(b.events)
        spans.append(w.write(ts, ch, batch_metadata(b.info, i)))
    w.close(end_of_stream=close)
    return spans


def test_round_trip_keeps_events_batch_metadata_and_header(tmp_path: Path) -> None:
    batches = make_batches(12, lossy={4})
    path = tmp_path / "p.arrows"
    write_file(path, batches)
    hd, got, stop = read_pass_file(path)
    assert stop.complete and stop.trailing_bytes == 0
    assert len(got) == len(batches)
    for g, b in zip(got, batches, strict=True):
        assert g.info == b.info
        assert same_events(g.events, b.events)
    assert PassHeader.model_validate_json(hd["qkd.header"]) == header()
    assert hd["tagger_model"] == "synthetic" and hd["stream_pass_id"] == header().stem
    assert json.loads(hd["channel_map"])["5"] == "SYNC"


def test_plain_pyarrow_reads_the_columns_and_batch_metadata(tmp_path: Path) -> None:
    """What a pandas/polars/DuckDB user does: no qkd-station code involved."""
    batches = make_batches(5)
    path = tmp_path / "p.arrows"
    write_file(path, batches)
    with pa.OSFile(str(path)) as f:
        table = ipc.open_stream(f).read_all()
    assert table.schema.field("timestamp_ps").type == pa.int64()
    assert table.schema.field("channel").type == pa.uint8()
    assert table.num_rows == sum(len(b) for b in batches)
    with pa.OSFile(str(path)) as f:
        reader = ipc.open_stream(f)
        _, md = reader.read_next_batch_with_custom_metadata()
    assert md[b"seq"] == b"0" and md[b"overflow_begin"] == b"false"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_file_cut_at_any_byte_reads_back_every_complete_batch(tmp_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 50), label="seed")
    n = data.draw(st.integers(0, 8), label="batches")
    batches = make_batches(n, seed=seed, max_events=400)
    full = tmp_path / f"full-{seed}-{n}.arrows"
    if not full.exists():
        write_file(full, batches)
    blob = full.read_bytes()
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    spans = [(o, o + ln) for o, ln, _, _ in scan_pass_file(full).index]
    assert len(spans) == n
    cut_path = tmp_path / "cut.arrows"
    cut_path.write_bytes(blob[:cut])
    hd, got, stop = read_pass_file(cut_path)
    whole = [i for i, (_, end) in enumerate(spans) if end <= cut]
    assert len(got) == len(whole)
    for g, b in zip(got, batches, strict=False):
        assert g.info == b.info and same_events(g.events, b.events)
    assert stop.complete == (cut == len(blob))
    assert stop.reason  # always says why it stopped
    if got:
        assert stop.last_good_offset_bytes == spans[len(got) - 1][1]
    if not stop.complete:
        assert stop.last_good_offset_bytes <= cut
        assert stop.trailing_bytes == cut - stop.last_good_offset_bytes
        if hd:
            assert "byte" in stop.reason


def test_recovery_cuts_a_crashed_file_after_its_last_batch_and_marks_it(tmp_path: Path) -> None:
    batches = make_batches(6, seed=3)
    path = tmp_path / "crashed.arrows"
    spans = write_file(path, batches, close=False)
    blob = path.read_bytes()
    path.write_bytes(blob[: spans[4][0] + spans[4][1] // 2])  # batch 4 half written
    info = recover_interrupted(path)
    assert not info.was_closed and info.batches == 4
    assert info.events == sum(len(b) for b in batches[:4])
    assert info.discarded_bytes == spans[4][1] // 2
    _, got, stop = read_pass_file(path)
    assert stop.complete and len(got) == 4
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["state"] == "interrupted" and side["recovery"]["batches"] == 4
    again = recover_interrupted(path)  # idempotent
    assert again.was_closed and again.batches == 4
    assert path.read_bytes().endswith(EOS)


def test_append_continues_a_cut_file(tmp_path: Path) -> None:
    batches = make_batches(6, seed=5)
    path = tmp_path / "p.arrows"
    spans = write_file(path, batches[:4], close=False)
    path.write_bytes(path.read_bytes()[: spans[3][0] + 5])  # last batch cut
    w = PassFileWriter(path, header().schema_metadata(), append=True)
    assert w.batches == 3
    for i, b in enumerate(batches[3:], start=3):
        w.write(*columns_of(b.events), batch_metadata(b.info, i))
    w.close()
    _, got, stop = read_pass_file(path)
    assert stop.complete and [g.info for g in got] == [b.info for b in batches]


async def test_fsync_at_least_every_flush_interval_of_tagger_time(pipeline) -> None:
    """flush_interval_s = 0.2 s; 1000 batches of 1 ms tagger time = 1 s: >= 5 fsyncs from
    the tagger-time bound alone (wall-time syncs may add more)."""
    rec = pipeline.open_pass(header())
    for b in make_batches(1000, max_events=10):
        await rec.push(b)
    totals = await rec.close()
    assert totals.syncs >= 5


def test_recovering_a_missing_file_reports_instead_of_raising(tmp_path: Path) -> None:
    info = recover_interrupted(tmp_path / "gone.arrows")
    assert info.batches == 0 and "cannot read" in info.reason


def test_the_simulator_seed_is_in_neither_the_header_nor_the_stream_header(tmp_path: Path) -> None:
    """The seed determines every basis and bit the simulated satellite sent: its secret."""
    assert "simulator_seed" not in PassHeader.model_fields
    assert "simulator_seed" not in header().schema_metadata()
    # A file from before the rule still reads, and is served without its seed.
    from station.events.source import PassSource

    md = header().schema_metadata()
    legacy = {**md, "simulator_seed": "424242",
              "qkd.header": json.dumps({**json.loads(md["qkd.header"]), "simulator_seed": 424242})}
    path = tmp_path / "legacy.arrows"
    w = PassFileWriter(path, legacy, compression="lz4")
    ts, ch = columns_of(make_batches(1)[0].events)
    w.write(ts, ch, batch_metadata(make_batches(1)[0].info))
    w.close()
    hd, _, _ = read_pass_file(path)
    assert hd["simulator_seed"] == "424242"  # really a legacy file
    served = PassSource.from_file(path).header
    assert "424242" not in json.dumps(served)
    assert PassHeader.model_validate_json(served["qkd.header"]) == header()


def test_inspect_never_shows_a_legacy_seed(tmp_path: Path) -> None:
    from station.events.inspection import inspect_pass_file

    md = {**header().schema_metadata(), "simulator_seed": "424242"}
    path = tmp_path / "legacy.arrows"
    w = PassFileWriter(path, md, compression="lz4")
    w.close()
    assert "424242" not in json.dumps(inspect_pass_file(path))
