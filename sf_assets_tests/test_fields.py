"""Typed reads shared by the manifest, spec and record parsers."""
from __future__ import annotations

import datetime

import pytest

from sf_assets.core.errors import ManifestError, SpecError
from sf_assets.core.fields import (
    Where,
    as_float,
    as_int,
    as_object,
    check_json_compatible,
    decode_utf8,
    describe,
    read_float,
    read_int,
    read_str,
)

ROOT = Where("f.json", "", ManifestError)


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true (a boolean)"),
        (None, "null"),
        ({}, "an object"),
        ([1], "a list"),
        ("32", '"32" (a string)'),
        (3, "3 (an integer)"),
        (2.5, "2.5 (a number)"),
        (float("nan"), "nan (not a finite number)"),
        ("x" * 100, '"' + "x" * 56 + '... (a string)'),
        ("a\nb", '"a\\nb" (a string)'),
        (datetime.date(2021, 1, 2), "a date"),
    ],
)
def test_describe_is_short_and_one_line(value, text):
    assert describe(value) == text


def test_paths_read_like_json_paths():
    where = ROOT.key("StudySets").item(2).key("studies").item(0).key("numChannels")
    with pytest.raises(ManifestError, match=r"^f.json: StudySets\[2\]\.studies\[0\]\.numChannels: boom$"):
        where.fail("boom")
    with pytest.raises(ManifestError, match="^f.json: top level: boom$"):
        ROOT.fail("boom")


def test_booleans_are_not_numbers():
    with pytest.raises(ManifestError, match="expected an integer from 0 to 5, got true"):
        as_int(True, ROOT, 0, 5)
    with pytest.raises(ManifestError, match="expected a number at least 0 and at most 5, got false"):
        as_float(False, ROOT, 0, 5)


def test_missing_keys_and_defaults():
    obj = {"a": 1}
    assert read_int(obj, "a", ROOT, 0, 5) == 1
    assert read_int(obj, "b", ROOT, 0, 5, 7) == 7
    assert read_float(obj, "b", ROOT, 0, 5, nullable=True, default=None) is None
    with pytest.raises(ManifestError, match="^f.json: b: missing key; expected a string$"):
        read_str(obj, "b", ROOT)


def test_object_keys_must_be_strings():
    with pytest.raises(ManifestError, match="expected string keys, got key 1 \\(an integer\\)"):
        as_object({1: "x"}, ROOT)


def test_json_compatible_values():
    where = Where("s.yaml", "params", SpecError)
    check_json_compatible({"a": [1, 2.5, None, True, "x", {"b": {}}]}, where)
    with pytest.raises(SpecError, match=r"^s.yaml: params.when: expected a string, number, boolean, null, list or mapping, got a date$"):
        check_json_compatible({"when": datetime.date(2021, 1, 1)}, where)
    with pytest.raises(SpecError, match=r"^s.yaml: params.x\[1\]: expected a finite number, got inf"):
        check_json_compatible({"x": [1, float("inf")]}, where)
    with pytest.raises(SpecError, match=r"params: expected string keys"):
        check_json_compatible({None: 1}, where)


def test_decode_utf8():
    assert decode_utf8("é".encode(), "f", ManifestError) == "é"
    assert decode_utf8(b"\xef\xbb\xbfx", "f", ManifestError) == "x"
    with pytest.raises(ManifestError, match="^f: not UTF-8 text: byte 0xc3 at offset 1$"):
        decode_utf8(b"a\xc3(", "f", ManifestError)
