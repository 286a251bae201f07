"""KacheryStore: local kachery-cloud storage with verified loads."""
from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from sf_assets.core.errors import UriError
from sf_assets.core.uris import parse_uri
from sf_assets.stores.kachery import KacheryStore, sha1_of_file, uri_label

MISSING_SHA1 = "0123456789abcdef0123456789abcdef01234567"


def test_store_bytes_returns_sha1_uri_with_label_and_loads_back(kachery_store):
    data = b"spike sorting\n" * 100
    uri = kachery_store.store_bytes(data, "notes.txt")
    assert uri == f"sha1://{hashlib.sha1(data).hexdigest()}/notes.txt"
    assert kachery_store.load_bytes(uri) == data
    path = kachery_store.load_file(uri)
    assert path.read_bytes() == data
    # The content lives in the store's own folder, in kachery-cloud's layout.
    sha1 = hashlib.sha1(data).hexdigest()
    assert path == kachery_store.root_dir / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def test_store_file_copies_the_content(kachery_store, tmp_path):
    source = tmp_path / "raw.bin"
    source.write_bytes(bytes(range(256)) * 4000)
    uri = kachery_store.store_file(source, "raw.mda")
    source.unlink()
    assert parse_uri(uri).path == "raw.mda"
    assert sha1_of_file(kachery_store.load_file(uri)) == parse_uri(uri).sha1


def test_store_json_is_deterministic_and_round_trips(kachery_store):
    obj = {"raw": "sha1://" + MISSING_SHA1 + "/raw.mda", "params": {"samplerate": 30000}, "geom": [[0.0, 1.5]]}
    uri = kachery_store.store_json(obj, "rec.json")
    assert kachery_store.store_json(dict(obj), "rec.json") == uri
    assert kachery_store.load_json(uri) == obj


def test_query_is_ignored_for_lookup(kachery_store):
    uri = kachery_store.store_json({"a": 1}, "a.json")
    assert kachery_store.load_json(f"{uri}?manifest={MISSING_SHA1}") == {"a": 1}

def test_location_query_does_not_reach_outside_the_store(kachery_store, tmp_path):
    # kachery-cloud itself would follow ?location= to a local file; the store does not.
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(b'{"a": 2}')
    sha1 = hashlib.sha1(b'{"a": 2}').hexdigest()
    with pytest.raises(UriError, match="not in the local store"):
        kachery_store.load_file(f"sha1://{sha1}/elsewhere.json?location={elsewhere}")


def test_missing_content_names_the_uri_and_hash(kachery_store):
    uri = f"sha1://{MISSING_SHA1}/raw.mda"
    with pytest.raises(UriError) as info:
        kachery_store.load_file(uri)
    assert uri in str(info.value)
    assert MISSING_SHA1 in str(info.value)
    assert "local store" in str(info.value)


def test_corrupt_content_names_expected_and_actual_hash(kachery_store):
    uri = kachery_store.store_bytes(b"original content", "x.txt")
    path = kachery_store.load_file(uri)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered content")
    expected = hashlib.sha1(b"original content").hexdigest()
    actual = hashlib.sha1(b"tampered content").hexdigest()
    for load in (kachery_store.load_file, kachery_store.load_bytes, kachery_store.load_json):
        with pytest.raises(UriError) as info:
            load(uri)
        message = str(info.value)
        assert uri in message and expected in message and actual in message


def test_two_stores_with_different_roots_are_separate(tmp_path):
    first = KacheryStore(tmp_path / "first")
    second = KacheryStore(tmp_path / "second")
    env_before = os.environ.get("KACHERY_CLOUD_DIR")
    uri = first.store_bytes(b"only in the first store", "x.txt")
    with pytest.raises(UriError, match="not in the local store"):
        second.load_bytes(uri)
    assert first.load_bytes(uri) == b"only in the first store"
    assert os.environ.get("KACHERY_CLOUD_DIR") == env_before
    assert not (tmp_path / "second" / "sha1").exists()


def test_stores_used_from_threads_keep_their_content_apart(tmp_path):
    stores = [KacheryStore(tmp_path / f"s{i}") for i in range(2)]
    uris: dict[int, list[str]] = {0: [], 1: []}

    def work(index: int) -> None:
        for n in range(15):
            uris[index].append(stores[index].store_bytes(f"{index}-{n}".encode(), "t.txt"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, store in enumerate(stores):
        other = stores[1 - index]
        for n, uri in enumerate(uris[index]):
            assert store.load_bytes(uri) == f"{index}-{n}".encode()
            with pytest.raises(UriError):
                other.load_file(uri)


def test_sha1dir_uris_are_refused_with_an_explanation(kachery_store):
    uri = f"sha1dir://{MISSING_SHA1}.paired_kampff/2014_11_25_Pair_3_0"
    with pytest.raises(UriError) as info:
        kachery_store.load_file(uri)
    assert uri in str(info.value)
    assert "pre-2021" in str(info.value)


@pytest.mark.parametrize("text", ["/some/local/path.json", "http://example.org/x", "sha1://nothex/x"])
def test_non_sha1_uris_are_refused(kachery_store, text):
    with pytest.raises(UriError):
        kachery_store.load_file(text)


def test_non_json_content_is_a_uri_error(kachery_store):
    uri = kachery_store.store_bytes(b"\x00\x01 not json", "x.json")
    with pytest.raises(UriError, match="expected JSON"):
        kachery_store.load_json(uri)


def test_store_json_refuses_nan(kachery_store):
    with pytest.raises(ValueError, match="snrs.json"):
        kachery_store.store_json({"snr": float("nan")}, "snrs.json")


def test_store_file_of_a_missing_file(kachery_store, tmp_path):
    with pytest.raises(UriError, match="no such file"):
        kachery_store.store_file(tmp_path / "absent.mda", "raw.mda")


def test_labels_are_made_safe_for_a_uri(kachery_store):
    assert uri_label("MountainSort5/synth_a1/001_synth.sorting.json") == "MountainSort5/synth_a1/001_synth.sorting.json"
    assert uri_label("my file?.txt") == "my_file_.txt"
    assert uri_label("/../a//b/") == "a/b"
    assert uri_label("") == "file"
    uri = kachery_store.store_bytes(b"x", "odd label #1?.txt")
    assert parse_uri(uri).path == "odd_label_1_.txt"
    assert kachery_store.load_bytes(uri) == b"x"


def test_cloud_mode_without_client_keys_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID", raising=False)
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY", raising=False)
    local = KacheryStore(tmp_path / "store")
    cloud = KacheryStore(tmp_path / "store", local_only=False)
    uri = local.store_bytes(b"already here", "x.txt")
    # Content already in the folder loads without the network, as locally.
    assert cloud.load_bytes(uri) == b"already here"
    started = time.monotonic()
    with pytest.raises(UriError, match="Client keys not found"):
        cloud.load_file(f"sha1://{MISSING_SHA1}/raw.mda")
    with pytest.raises(UriError, match="Client keys not found"):
        cloud.store_bytes(b"new", "new.txt")
    assert time.monotonic() - started < 10


def test_every_part_of_a_uri_label_fits_a_file_name():
    study, recording = "S" * 128, "r" * 128 + "_" * 200
    label = uri_label(f"MountainSort5/{study}/{recording}.sorting.json")
    parts = label.split("/")
    assert parts[:2] == ["MountainSort5", study]
    assert len(parts[2].encode()) <= 255 and parts[2].startswith("r" * 128)


def test_storing_content_again_repairs_a_corrupted_stored_copy(kachery_store):
    # kachery-cloud skips the copy when a file of that hash exists: a sort repeated because its
    # stored sorting did not verify (same seed, same firings) must not leave the store corrupt.
    uri = kachery_store.store_bytes(b"firings" * 1000, "firings.mda")
    stored = kachery_store.load_file(uri)
    stored.chmod(0o644)
    stored.write_bytes(b"garbage" * 1000)
    with pytest.raises(UriError, match="corrupt"):
        kachery_store.load_file(uri)
    assert kachery_store.store_bytes(b"firings" * 1000, "firings.mda") == uri
    assert kachery_store.load_bytes(uri) == b"firings" * 1000
