"""The bounding helpers and the persisted request-id window, on their own (no network:
these are the pieces the broker tests in test_hostile.py rely on)."""

from __future__ import annotations

import os

import pytest

from station.mqtt.commands import bounded_reply
from station.mqtt.dedupe import FILE_NAME, SeenRequests
from station.mqtt.limits import MAX_REPLY_BYTES, brief, clip, json_depth_exceeds, topic_problem
from station.mqtt.messages import REQUEST_ID_RE, CommandError, CommandReply
from tests.mqtt.helpers import START


def test_clip_escapes_and_bounds():
    assert clip("plain") == "plain"
    assert clip("a\nb\x1b[31m\r") == "a\\nb\\x1b[31m\\r"
    long = clip("é" * 10_000, 50)
    assert len(long) < 80 and long.endswith("(10000 characters)") and "\\xe9" in long


def test_brief_keeps_small_values_and_cuts_big_ones():
    assert brief(45.5) == 45.5 and brief(True) is True and brief("north") == "north"
    assert brief(10**4000) == "1" + "0" * 19 + "… (4001 digits)"
    assert brief("x" * 1000).endswith("… (1000 characters)") and len(brief("x" * 1000)) < 120
    assert len(brief([[[[["x" * 500]]]]])) < 200


def test_topic_problem_names_the_problem():
    assert topic_problem("qkd/a/reply/x") is None
    assert "wildcard" in topic_problem("qkd/a/reply/#")
    assert "wildcard" in topic_problem("qkd/+/reply")
    assert "control" in topic_problem("qkd/a/reply/abc\n")
    assert "control" in topic_problem("qkd/\x00")
    assert topic_problem("") == "empty topic"
    assert "UTF-8" in topic_problem("qkd/\udc80")


def test_json_depth_is_measured_without_recursion():
    value: list = []
    for _ in range(100_000):
        value = [value]
    assert json_depth_exceeds(value)
    assert not json_depth_exceeds({"a": [1, {"b": 2}]})


def test_request_id_must_match_in_full():
    assert REQUEST_ID_RE.fullmatch("op-1.2:3_x")
    for bad in ("abc\n", "_a", "a b", "a" * 65, ""):
        assert not REQUEST_ID_RE.fullmatch(bad), bad


def test_a_reply_is_cut_to_its_bound():
    reply = CommandReply(request_id="r", verb="goto", ok=False, time=START,
                         error=CommandError(code="invalid_request", message="m" * 20_000,
                                            details=[{"field": "f", "value": "v" * 5000, "reason": "r"}]))
    assert len(bounded_reply(reply).to_json()) <= MAX_REPLY_BYTES
    ok = CommandReply(request_id="r", verb="x", ok=True, time=START, result={"big": "b" * 20_000})
    cut = bounded_reply(ok)
    assert len(cut.to_json()) <= MAX_REPLY_BYTES and cut.result["truncated"] is True


def test_seen_requests_persist_with_a_bounded_window(tmp_path):
    path = tmp_path / "state" / FILE_NAME
    seen = SeenRequests(path, keep=5, window_s=100.0)
    assert seen.load(0.0) == 0
    for i in range(30):  # more than 2 x keep: the file is compacted on the way
        seen.add(f"r{i}", float(i))
    assert [f"r{i}" in seen for i in (24, 25, 29)] == [False, True, True]
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert len(path.read_text().splitlines()) <= 2 * 5 + 1
    with open(path, "ab") as f:
        f.write(b"12.0 torn-li")  # a crash mid-line
    again = SeenRequests(path, keep=5, window_s=100.0)
    assert again.load(30.0) == 5
    assert "r29" in again and "r25" in again and "r24" not in again and "torn-li" not in again
    # The window: old ids are forgotten.
    later = SeenRequests(path, keep=5, window_s=100.0)
    assert later.load(1000.0) == 0


def test_an_unwritable_state_dir_keeps_ids_in_memory(tmp_path, caplog):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    seen = SeenRequests(blocker / FILE_NAME)
    assert seen.load(0.0) == 0
    seen.add("r1", 0.0)
    seen.add("r2", 0.0)
    assert "r1" in seen and "r2" in seen
    assert sum("in memory only" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("junk", [b"\xff\xfe\n", b"1.0 has space x\n", b"nonsense\n", b"1.0 _bad\n"])
def test_junk_in_the_id_file_is_skipped(tmp_path, junk):
    path = tmp_path / FILE_NAME
    path.write_bytes(b"1.0 good-1\n" + junk + b"2.0 good-2\n")
    seen = SeenRequests(path)
    assert seen.load(3.0) == 2 and "good-1" in seen and "good-2" in seen
