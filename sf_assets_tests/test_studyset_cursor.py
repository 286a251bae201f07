"""The studyset sensor's cursor: digest of the sources and the pairs requested so far."""
from __future__ import annotations

import base64
import zlib

import pytest

from sf_assets.core.studyset_cursor import CURSOR_FORMAT, StudysetCursor, params_digest, sources_digest


def test_digest_changes_with_any_byte_or_name_and_not_otherwise():
    base = [("spec.yaml", b"a: 1\n"), ("studysets.json", b"{}")]
    assert sources_digest(base) == sources_digest(list(base))
    assert sources_digest(base) != sources_digest([("spec.yaml", b"a: 2\n"), base[1]])
    assert sources_digest(base) != sources_digest([("other.yaml", b"a: 1\n"), base[1]])
    # Length prefixes keep a byte from moving between name and content unnoticed.
    assert sources_digest([("ab", b"c")]) != sources_digest([("a", b"bc")])
    assert len(sources_digest(base)) == 40


def test_an_empty_or_missing_cursor_is_the_empty_cursor():
    for text in (None, ""):
        cursor = StudysetCursor.decode(text)
        assert cursor.digest is None and cursor.requested == frozenset()


def test_round_trip_keeps_digest_and_every_pair():
    pairs = {("MountainSort5", f"study.rec{i:03d}") for i in range(50)} | {("Simple", "study.rec007")}
    cursor = StudysetCursor().after_tick("d" * 40, pairs)
    again = StudysetCursor.decode(cursor.encode())
    assert again == cursor
    assert again.requested == frozenset(pairs)
    assert cursor.encode().startswith(CURSOR_FORMAT + ":")


def test_after_tick_accumulates_pairs_and_replaces_the_digest():
    first = StudysetCursor().after_tick("1" * 40, {("A", "r1")})
    second = first.after_tick("2" * 40, {("B", "r1")})
    assert second.digest == "2" * 40
    assert second.requested == {("A", "r1"), ("B", "r1")}


def test_waiting_pairs_round_trip_and_leave_the_wait_when_a_tick_says_so():
    first = StudysetCursor().after_tick("1" * 40, {("A", "r1"), ("A", "r2")}, waiting={("A", "r2")})
    assert first.requested == {("A", "r1"), ("A", "r2")} and first.waiting == {("A", "r2")}
    assert StudysetCursor.decode(first.encode()) == first
    # The next tick requested r2's sort: nothing waits, and r2 stays requested.
    second = first.after_tick("1" * 40, (), waiting=())
    assert second.waiting == frozenset() and second.requested == first.requested


def test_held_pairs_round_trip_apart_from_the_waiting_ones_and_are_forgotten_with_their_sorter():
    cursor = StudysetCursor().after_tick(
        "1" * 40, {("A", "r1")}, waiting={("A", "r2")}, held={("A", "r3"), ("B", "r3")}
    )
    assert cursor.requested == {("A", "r1"), ("A", "r2"), ("A", "r3"), ("B", "r3")}
    assert cursor.waiting == {("A", "r2")} and cursor.held == {("A", "r3"), ("B", "r3")}
    assert cursor.pending == {("A", "r2"), ("A", "r3"), ("B", "r3")}
    assert StudysetCursor.decode(cursor.encode()) == cursor
    forgotten = cursor.forget({"A"})
    assert forgotten.held == {("B", "r3")} and forgotten.waiting == frozenset()
    # The run holding B's pair ended and the next tick requested its sort: it is no longer held.
    assert forgotten.after_tick("1" * 40, ()).pending == frozenset()


def test_recording_uris_round_trip_and_a_corrected_one_forgets_that_recordings_pairs():
    from sf_assets.core.studyset_cursor import uris_digest

    before = {"r1": uris_digest("sha1://rec1", "sha1://gt1"), "r2": uris_digest("sha1://rec2", "sha1://gt2")}
    cursor = StudysetCursor().after_tick("1" * 40, {("A", "r1"), ("B", "r1"), ("A", "r2")}, uris=before)
    assert StudysetCursor.decode(cursor.encode()) == cursor
    corrected = {**before, "r1": uris_digest("sha1://rec1", "sha1://gt1-fixed"), "r3": uris_digest("x", "y")}
    assert cursor.changed_recordings(corrected) == {"r1"}, "r3 is new: its pairs are new anyway"
    assert cursor.forget(recordings={"r1"}).requested == {("A", "r2")}


def test_a_cursor_written_before_waiting_existed_reads_as_waiting_for_nothing():
    document = b'{"digest": "ab", "recordings": ["r"], "requested": {"s": [0]}}'
    old = f"{CURSOR_FORMAT}:" + base64.urlsafe_b64encode(zlib.compress(document)).decode()
    cursor = StudysetCursor.decode(old)
    assert cursor.requested == {("s", "r")} and cursor.waiting == frozenset() and cursor.held == frozenset()


def test_params_digests_round_trip_and_name_the_sorters_whose_params_changed():
    ms5, simple = params_digest({"whitening_seed": 2, "detect_threshold": 5.5}), params_digest({"seed": 1})
    assert ms5 == params_digest({"detect_threshold": 5.5, "whitening_seed": 2}), "key order does not count"
    assert ms5 != params_digest({"whitening_seed": 2, "detect_threshold": 6.0})
    cursor = StudysetCursor().after_tick("1" * 40, {("A", "r1"), ("B", "r1")}, params={"A": ms5, "B": simple})
    assert StudysetCursor.decode(cursor.encode()) == cursor
    # A changed; B unchanged; C new (its pairs are new anyway): only A's pairs are planned again.
    now = {"A": params_digest({"whitening_seed": 2}), "B": simple, "C": ms5}
    assert cursor.changed_sorters(now) == {"A"}
    forgotten = cursor.forget({"A"})
    assert forgotten.requested == {("B", "r1")} and forgotten.params == cursor.params
    # A tick that omits params keeps the cursor's; one that gives them replaces them.
    assert forgotten.after_tick("2" * 40, ()).params == cursor.params
    assert forgotten.after_tick("2" * 40, {("A", "r1")}, params=now).params == now


def test_a_sorter_dropped_and_added_back_with_other_params_is_a_change():
    cursor = StudysetCursor().after_tick("1" * 40, {("A", "r1")}, params={"A": params_digest({"seed": 1})})
    dropped = cursor.after_tick("2" * 40, (), params={})  # the spec no longer names A
    assert dropped.changed_sorters({"A": params_digest({"seed": 2})}) == {"A"}
    assert dropped.changed_sorters({"A": params_digest({"seed": 1})}) == set()


def test_a_cursor_written_before_params_were_kept_changes_no_sorter():
    document = b'{"digest": "ab", "recordings": ["r"], "requested": {"s": [0]}, "waiting": {}}'
    old = StudysetCursor.decode(f"{CURSOR_FORMAT}:" + base64.urlsafe_b64encode(zlib.compress(document)).decode())
    assert old.params == {} and old.changed_sorters({"s": params_digest({})}) == set()


def test_a_full_campaign_cursor_stays_small():
    recordings = [f"HYBRID_JANELIA.hybrid_static_siprobe_rec_{i:04d}_long--name" for i in range(900)]
    sorters = [f"Sorter{i}" for i in range(10)]
    cursor = StudysetCursor().after_tick("f" * 40, {(s, r) for s in sorters for r in recordings})
    text = cursor.encode()
    assert len(text) < 20_000, len(text)
    assert StudysetCursor.decode(text).requested == cursor.requested


@pytest.mark.parametrize(
    "text",
    [
        "not a cursor",
        f"{CURSOR_FORMAT}:@@@",
        f"{CURSOR_FORMAT}:" + base64.urlsafe_b64encode(b"plain text, not zlib").decode(),
        f"{CURSOR_FORMAT}:" + base64.urlsafe_b64encode(zlib.compress(b'{"digest": null}')).decode(),
        f"{CURSOR_FORMAT}:"
        + base64.urlsafe_b64encode(zlib.compress(b'{"digest": 5, "recordings": [], "requested": {}}')).decode(),
        f"{CURSOR_FORMAT}:"
        + base64.urlsafe_b64encode(
            zlib.compress(b'{"digest": null, "recordings": ["r"], "requested": {"s": [3]}}')
        ).decode(),
        f"{CURSOR_FORMAT}:"
        + base64.urlsafe_b64encode(
            zlib.compress(b'{"digest": null, "recordings": [], "requested": {}, "params": {"s": 5}}')
        ).decode(),
    ],
)
def test_an_unreadable_cursor_is_refused_with_advice(text):
    with pytest.raises(ValueError, match="studyset sensor cursor") as info:
        StudysetCursor.decode(text)
    assert "reset the sensor's cursor" in str(info.value) or "digest must be" in str(info.value)
