"""URI parsing: every part of the SpikeForest URIs, and a clear error for anything else."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf_assets.core.errors import UriError
from sf_assets.core.uris import MAX_URI_CHARS, KacheryUri, is_kachery_uri, parse_uri

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
HASH = "fc20ee690953360b9f5a29248dc1e61a6f6151e2"


def test_sha1_uri_with_name_and_query():
    uri = parse_uri(f"sha1://{HASH}/firings_true.mda?manifest=c1788083e513bbc99bd8ddce4121a17a2a8dc972")
    assert uri == KacheryUri("sha1", HASH, "firings_true.mda", {"manifest": "c1788083e513bbc99bd8ddce4121a17a2a8dc972"})
    assert uri.sha1 == HASH


def test_sha1_uri_without_name_or_with_nested_name():
    assert parse_uri(f"sha1://{HASH}") == KacheryUri("sha1", HASH, "", {})
    assert parse_uri(f"sha1://{HASH}/") == KacheryUri("sha1", HASH, "", {})
    assert parse_uri(f"sha1://{HASH}/dir/raw.mda").path == "dir/raw.mda"


def test_sha1dir_uri_keeps_the_directory_name_and_inner_path():
    uri = parse_uri(f"sha1dir://{HASH}.paired_kampff/2014_11_25_Pair_3_0/firings_true.mda")
    assert (uri.scheme, uri.sha1, uri.dir_name, uri.path) == (
        "sha1dir",
        HASH,
        "paired_kampff",
        "2014_11_25_Pair_3_0/firings_true.mda",
    )
    assert parse_uri(f"sha1dir://{HASH}").dir_name == ""


@pytest.mark.parametrize(
    "text",
    [
        f"sha1://{HASH}/firings_true.mda?manifest=abc",
        f"sha1://{HASH}",
        f"sha1dir://{HASH}.kampff/rec/raw.mda",
        f"sha1://{HASH}/x.json?a=1&b=two",
    ],
)
def test_str_gives_the_uri_back(text):
    assert str(parse_uri(text)) == text


def test_every_uri_in_the_shipped_manifest_parses():
    manifest = json.loads((RESOURCES / "studysets_tiny.json").read_text())
    uris = [
        rec[key]
        for study_set in manifest["StudySets"]
        for study in study_set["studies"]
        for rec in study["recordings"]
        for key in ("recordingUri", "sortingTrueUri")
    ]
    assert len(uris) == 8
    assert all(isinstance(parse_uri(u), KacheryUri) for u in uris)


@pytest.mark.parametrize("text", ["studysets.json", "/abs/dir/spec.yaml", "./a/b", "a:b.json", "résumé.json"])
def test_text_without_a_scheme_is_a_path(text):
    assert parse_uri(text) == Path(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "expected a sha1:// URI or a path, got an empty string"),
        ("sha1://nothex/x", "expected 40 lowercase hex digits after sha1://"),
        (f"sha1://{HASH.upper()}/x", "expected 40 lowercase hex digits after sha1://"),
        (f"sha1://{HASH[:-1]}/x", "expected 40 lowercase hex digits after sha1://"),
        (f"sha1://{HASH}0/x", "expected 40 lowercase hex digits after sha1://"),
        ("sha1dir://nothex.dir/x", "expected 40 lowercase hex digits after sha1dir://"),
        ("http://example.org/studysets.json", "expected a sha1:// or sha1dir:// URI or a local path"),
        ("file:///etc/passwd", "expected a sha1:// or sha1dir:// URI or a local path"),
        ("SHA1://" + HASH, "expected a sha1:// or sha1dir:// URI or a local path"),
        (f"sha1:/{HASH}/x", "expected a sha1:// or sha1dir:// URI or a local path"),
        (f" sha1://{HASH}/x", "leading or trailing whitespace"),
        ("studysets.json\n", "leading or trailing whitespace"),
        ("stud\x00ysets.json", "control characters are not allowed"),
        (f"sha1://{HASH}/x?a", "malformed query"),
        (f"sha1://{HASH}/x?a=1&&b=2", "malformed query"),
        (f"sha1://{HASH}/x?=1", "query parameter with an empty name"),
        (f"sha1://{HASH}/x?a=1&a=2", "query parameter 'a' appears twice"),
    ],
)
def test_malformed_uris_are_refused_with_the_reason(text, expected):
    with pytest.raises(UriError) as info:
        parse_uri(text, "spec.yaml: studysets")
    message = str(info.value)
    assert message.startswith("spec.yaml: studysets: ")
    assert expected in message
    assert "\n" not in message


def test_error_shows_the_offending_text():
    with pytest.raises(UriError, match=r"\(in 'sha1://nothex/x'\)"):
        parse_uri("sha1://nothex/x")


def test_overlong_text_is_refused_before_parsing():
    with pytest.raises(UriError, match=f"at most {MAX_URI_CHARS} characters, got {MAX_URI_CHARS + 1}"):
        parse_uri("a" * (MAX_URI_CHARS + 1))


def test_non_string_is_refused():
    with pytest.raises(UriError, match="expected a URI or path as a string, got int"):
        parse_uri(3)  # type: ignore[arg-type]


def test_is_kachery_uri_looks_only_at_the_scheme():
    assert is_kachery_uri(f"sha1://{HASH}/x")
    assert is_kachery_uri("sha1dir://whatever")
    assert not is_kachery_uri("studysets.json")
    assert not is_kachery_uri("http://example.org")
