"""Labels and the one two-way mapping between labels and partition keys."""
from __future__ import annotations

import random
import re

import pytest

from sf_assets.core.labels import (
    MAX_NAME_CHARS,
    ground_truth_label,
    label_to_partition_key,
    name_problem,
    partition_key_to_label,
    recording_label,
    sorting_label,
)

KEY_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


def test_label_formats():
    assert recording_label("paired_kampff", "2014_11_25_Pair_3_0") == "paired_kampff/2014_11_25_Pair_3_0"
    assert ground_truth_label("paired_kampff", "c14") == "Ground-Truth/paired_kampff/c14"
    assert sorting_label("MountainSort4", "paired_kampff", "c14") == "MountainSort4/paired_kampff/c14"


@pytest.mark.parametrize(
    "label, key",
    [
        ("paired_kampff/2014_11_25_Pair_3_0", "paired_kampff.2014_11_25_Pair_3_0"),
        ("Ground-Truth/s/r.1", "Ground--Truth.s.r-d1"),
        ("a b|c,d", "a-x20b-x7cc-x2cd"),
        ("é", "-xc3-xa9"),
        ("-x41", "--x41"),
        ("..", "-d-d"),
        ("Kilosort2.5", "Kilosort2-d5"),
    ],
)
def test_known_keys(label, key):
    assert label_to_partition_key(label) == key
    assert partition_key_to_label(key) == label


def test_round_trip_on_random_labels_and_keys_use_only_safe_characters():
    rng = random.Random(7)
    alphabet = "aZ09_/.-| ,:é漢🙂\t"
    for _ in range(2000):
        label = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        key = label_to_partition_key(label)
        assert KEY_CHARS.fullmatch(key), key
        assert partition_key_to_label(key) == label


def test_distinct_labels_give_distinct_keys():
    labels = ["a/b", "a.b", "a-b", "a--b", "a-db", "a/-d", "a-x2fb", "a b"]
    keys = [label_to_partition_key(label) for label in labels]
    assert len(set(keys)) == len(labels)


@pytest.mark.parametrize(
    "key, problem",
    [
        ("", "cannot be empty"),
        ("a|b", "malformed partition key 'a|b' at character 1"),
        ("a/b", "malformed partition key"),
        ("ab-", "malformed partition key 'ab-' at character 2"),
        ("a-y", "malformed partition key"),
        ("a-xZZ", "malformed partition key"),
        ("a-xC3-xA9", "malformed partition key"),
        ("-xff", "escapes bytes that are not UTF-8: -xff"),
        ("-xc3", "escapes bytes that are not UTF-8"),
        ("-x41", "not in canonical form (expected 'A')"),
        ("-x2f", "not in canonical form (expected '.')"),
    ],
)
def test_malformed_keys_are_refused(key, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        partition_key_to_label(key)


def test_empty_label_and_lone_surrogate_have_no_key():
    with pytest.raises(ValueError, match="empty label"):
        label_to_partition_key("")
    with pytest.raises(ValueError):
        label_to_partition_key("a\ud800")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        ("a/b", "contains '/'"),
        (".", "is '.'"),
        ("..", "is '..'"),
        ("a\nb", "contains the control character U+000A"),
        ("a\x07", "contains the control character U+0007"),
        ("a\u2028", "contains the control character U+2028"),
        ("x" * (MAX_NAME_CHARS + 1), f"is {MAX_NAME_CHARS + 1} characters long (at most {MAX_NAME_CHARS})"),
        (3, "is not a string"),
    ],
)
def test_name_problems(name, problem):
    assert name_problem(name) == problem


@pytest.mark.parametrize("name", ["paired_kampff", "2014_11_25_Pair_3_0", "a b", "...", "x" * MAX_NAME_CHARS, "é"])
def test_good_names(name):
    assert name_problem(name) is None


def test_labels_refuse_parts_that_would_make_them_ambiguous():
    with pytest.raises(ValueError, match="label part 'a/b' contains '/'"):
        recording_label("a/b", "c")
    with pytest.raises(ValueError, match=r"label part '\.\.' is '\.\.'"):
        sorting_label("MS4", "..", "c")
    with pytest.raises(ValueError, match="label part '' is empty"):
        ground_truth_label("s", "")
