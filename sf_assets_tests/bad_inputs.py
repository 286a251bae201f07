"""A table of malformed manifests, specs and sources that ``check-config`` must refuse.

Each :class:`BadInput` is a folder of files (a valid manifest ``m.json`` and
spec ``s.yaml`` with one thing broken), the ``check-config`` arguments to run
in that folder, the file the one-line message must name and a phrase it must
contain.  ``test_bad_inputs.py`` runs every row; other tests may reuse rows.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
TINY: dict = json.loads((RESOURCES / "studysets_tiny.json").read_text())
SORTER = "MountainSort4"
"""A catalog sorter (named in SpikeForest's own small-spec.yaml)."""

SPEC = f"""\
studysets: m.json
studyset-names: [PAIRED_KAMPFF, SYNTH_MAGLAND]
spike-sorters:
  - name: {SORTER}
    params: {{}}
    studysets: [PAIRED_KAMPFF, SYNTH_MAGLAND]
"""
REC = "StudySets[0].studies[0].recordings[0]"
NOT_HEX = "sha1://nothex/2014_11_25_Pair_3_0.json"


@dataclass(frozen=True)
class BadInput:
    """One malformed input and what ``check-config`` must say about it.

    Attributes
    ----------
    id : str
        Test id.
    problem : str
        A phrase the error line must contain.
    manifest : bytes
        Content of ``m.json``.
    spec : bytes
        Content of ``s.yaml``.
    argv : tuple[str, ...]
        Arguments after ``check-config``.
    file : str
        The file (or source) the message must start with, after ``sf-assets: error: ``.
    """

    id: str
    problem: str
    manifest: bytes = json.dumps(TINY, indent=1).encode()
    spec: bytes = SPEC.encode()
    argv: tuple[str, ...] = ("-s", "m.json", "-l", "s.yaml")
    file: str = "m.json"


def _manifest(change: Callable[[dict], None]) -> bytes:
    doc = copy.deepcopy(TINY)
    change(doc)
    return json.dumps(doc, indent=1).encode()


def _recording(doc: dict) -> dict:
    return doc["StudySets"][0]["studies"][0]["recordings"][0]


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda doc: _recording(doc).__setitem__(key, value)


def _rename_study(doc: dict, name: str, set_index: int = 0) -> None:
    study = doc["StudySets"][set_index]["studies"][0]
    study["name"] = name
    for rec in study["recordings"]:
        rec["studyName"] = name


def _text(replace: str, by: str) -> bytes:
    text = json.dumps(TINY, indent=1)
    assert replace in text, replace
    return text.replace(replace, by, 1).encode()


def _spec(replace: str, by: str) -> bytes:
    assert replace in SPEC, replace
    return SPEC.replace(replace, by, 1).encode()


def _spec_case(id: str, problem: str, spec: bytes | str) -> BadInput:
    return BadInput(id, problem, spec=spec if isinstance(spec, bytes) else spec.encode(), file="s.yaml")


LEGACY = {
    "name": "PAIRED_KAMPFF",
    "studies": [
        {
            "name": "paired_kampff",
            "recordings": [{"name": "c14", "directory": f"sha1dir://{'1' * 40}.paired_kampff/c14"}],
        }
    ],
}

BAD_INPUTS: tuple[BadInput, ...] = (
    # --- the manifest: syntax and encoding
    BadInput("manifest-invalid-json", "invalid JSON at line 2, column 1: Expecting value", manifest=b'{"StudySets": [\n'),
    BadInput("manifest-not-utf8", "not UTF-8 text: byte 0xff at offset 16", manifest=b'{"StudySets": ["\xff"]}'),
    BadInput("manifest-top-level-list", "top level: expected an object, got a list", manifest=b"[]"),
    BadInput("manifest-no-study-sets", "top level: expected an object with key 'StudySets'", manifest=b'{"sets": []}'),
    BadInput("manifest-study-sets-not-a-list", "StudySets: expected a list, got an object", manifest=b'{"StudySets": {}}'),
    BadInput("manifest-nan", f"{REC}.durationSec: expected a number above 0", manifest=_text('"durationSec": 557.218', '"durationSec": NaN')),
    BadInput("manifest-infinite", "got inf (not a finite number)", manifest=_text('"durationSec": 557.218', '"durationSec": 1e999')),
    BadInput("manifest-number-too-long", "invalid JSON: Exceeds the limit (4300 digits)", manifest=_text('"numChannels": 32', '"numChannels": ' + "3" * 5000)),
    BadInput("manifest-nested-too-deeply", "invalid JSON: nested too deeply", manifest=b"[" * 200_000),
    BadInput("manifest-duplicate-json-key", f"{REC}: key 'numChannels' appears more than once", manifest=_text('"numChannels": 32,', '"numChannels": 32, "numChannels": 4,')),
    # --- the manifest: types and values
    BadInput("manifest-missing-key", f"{REC}.numChannels: missing key; expected an integer", manifest=_manifest(lambda d: _recording(d).pop("numChannels"))),
    BadInput("manifest-bool-is-not-an-int", f"{REC}.numChannels: expected an integer from 1 to 100000, got true (a boolean)", manifest=_manifest(_set("numChannels", True))),
    BadInput("manifest-string-number", f'{REC}.sampleRateHz: expected a number above 0 and at most 1e+07, got "30000" (a string)', manifest=_manifest(_set("sampleRateHz", "30000"))),
    BadInput("manifest-fractional-count", f"{REC}.numTrueUnits: expected an integer from 0 to 1000000, got 1.5 (a number)", manifest=_manifest(_set("numTrueUnits", 1.5))),
    BadInput("manifest-huge-count", f"{REC}.numChannels: expected an integer from 1 to 100000, got 1000000000000000", manifest=_manifest(_set("numChannels", 10**15))),
    BadInput("manifest-spike-sign", f"{REC}.spikeSign: expected -1 or 1, got 0 (an integer)", manifest=_manifest(_set("spikeSign", 0))),
    BadInput("manifest-info-not-an-object", "StudySets[1].info: expected an object, got a list", manifest=_manifest(lambda d: d["StudySets"][1].__setitem__("info", []))),
    # --- the manifest: names and structure
    BadInput("manifest-study-name-disagrees", f"{REC}.studyName: expected 'paired_kampff' (the name of the enclosing study)", manifest=_manifest(_set("studyName", "synth_magland_noise20_K20_C8"))),
    BadInput("manifest-study-set-name-disagrees", f"{REC}.studySetName: expected 'PAIRED_KAMPFF' (the name of the enclosing study set)", manifest=_manifest(_set("studySetName", "SYNTH_MAGLAND"))),
    BadInput("manifest-study-in-wrong-set", "StudySets[1].studies[0].studySetName: expected 'SYNTH_MAGLAND'", manifest=_manifest(lambda d: d["StudySets"][1]["studies"][0].__setitem__("studySetName", "PAIRED_KAMPFF"))),
    BadInput("manifest-duplicate-recording", "StudySets[0].studies[0].recordings[1].name: duplicate recording name '2014_11_25_Pair_3_0'", manifest=_manifest(lambda d: d["StudySets"][0]["studies"][0]["recordings"][1].__setitem__("name", "2014_11_25_Pair_3_0"))),
    BadInput("manifest-duplicate-study", "StudySets[1].studies[0].name: duplicate study name 'paired_kampff' (first at StudySets[0].studies[0].name)", manifest=_manifest(lambda d: _rename_study(d, "paired_kampff", set_index=1))),
    BadInput("manifest-duplicate-study-set", "StudySets[2].name: duplicate study set name 'PAIRED_KAMPFF'", manifest=_manifest(lambda d: d["StudySets"].append(copy.deepcopy(d["StudySets"][0])))),
    BadInput("manifest-recording-path-traversal", f"{REC}.name: expected a non-empty name without '/'", manifest=_manifest(_set("name", "../../etc"))),
    BadInput("manifest-study-name-with-slash", "StudySets[0].studies[0].name: expected a non-empty name without '/' or control characters, other than '.' and '..', got \"paired/kampff\" (a string), which contains '/'", manifest=_manifest(lambda d: _rename_study(d, "paired/kampff"))),
    BadInput("manifest-study-set-dot-dot", "StudySets[0].name: expected a non-empty name", manifest=_manifest(lambda d: d["StudySets"][0].__setitem__("name", ".."))),
    BadInput("manifest-empty-name", f"{REC}.name: expected a non-empty name", manifest=_manifest(_set("name", ""))),
    BadInput("manifest-control-character", f"{REC}.name: expected a non-empty name without '/' or control characters, other than '.' and '..', got \"a\\u001bb\" (a string), which contains the control character U+001B", manifest=_manifest(_set("name", "a\x1bb"))),
    BadInput("manifest-huge-name", f"{REC}.name: expected a non-empty name", manifest=_manifest(_set("name", "r" * 100_000))),
    BadInput("manifest-uri-not-hex", f"{REC}.recordingUri: expected 40 lowercase hex digits after sha1:// (in '{NOT_HEX}')", manifest=_manifest(_set("recordingUri", NOT_HEX))),
    BadInput("manifest-uri-http", f'{REC}.sortingTrueUri: expected a sha1:// URI, got "http://example.org/gt.json" (a string)', manifest=_manifest(_set("sortingTrueUri", "http://example.org/gt.json"))),
    BadInput("manifest-uri-empty", f'{REC}.recordingUri: expected a sha1:// URI, got "" (a string)', manifest=_manifest(_set("recordingUri", ""))),
    BadInput("manifest-legacy-missing-study-name", "studies[0].recordings[0].studyName: missing key; expected a string", manifest=json.dumps(LEGACY).encode()),
    # --- the spec
    _spec_case("spec-invalid-yaml", "invalid YAML at line 2, column 17: while parsing a flow node; expected the node content, but found '}'", "studyset-names: [A]\nspike-sorters: [}\n"),
    _spec_case("spec-not-utf8", "not UTF-8 text: byte 0xfe at offset 16", b"studyset-names: \xfe\n"),
    _spec_case("spec-empty", "top level: expected a mapping with keys studysets, studyset-names, spike-sorters; the file is empty", ""),
    _spec_case("spec-top-level-list", "top level: expected an object, got a list", "- PAIRED_KAMPFF\n"),
    _spec_case("spec-python-object", "invalid YAML at line 1, column 12: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'", "studysets: !!python/object/apply:os.system ['touch pwned']\n"),
    _spec_case("spec-python-name", "could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'", "studysets: !!python/name:os.system ''\n"),
    _spec_case("spec-alias-bomb", "YAML aliases (*name) are not accepted in a spec", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"),
    _spec_case("spec-duplicate-yaml-key", "invalid YAML at line 7, column 1: key 'studyset-names' appears twice", SPEC + "studyset-names: [PAIRED_KAMPFF]\n"),
    _spec_case("spec-both-spellings", "top level: key 'spike-sorters' is given twice, as 'spike-sorters' and 'spike_sorters'; keep one", SPEC + "spike_sorters: []\n"),
    _spec_case("spec-unknown-key", "sorters: unknown key; expected one of: studysets, studyset-names, spike-sorters", SPEC + "sorters: []\n"),
    _spec_case("spec-unknown-sorter", "spike-sorters[0].name: ", _spec(f"name: {SORTER}", "name: NoSuchSorter")),
    _spec_case("spec-sorter-twice", f"spike-sorters[1].name: sorter '{SORTER}' is listed twice (also at spike-sorters[0])", SPEC + f"  - name: {SORTER}\n    studysets: [PAIRED_KAMPFF]\n"),
    _spec_case("spec-sorter-without-study-sets", "spike-sorters[0].studysets: expected at least one study set for this sorter, got an empty list", _spec("studysets: [PAIRED_KAMPFF, SYNTH_MAGLAND]\n", "studysets: []\n")),
    _spec_case("spec-undeclared-study-set", "spike-sorters[0].studysets[1]: study set 'SYNTH_MAGLAND' is not declared in studyset-names (PAIRED_KAMPFF)", _spec("studyset-names: [PAIRED_KAMPFF, SYNTH_MAGLAND]", "studyset-names: [PAIRED_KAMPFF]")),
    _spec_case("spec-study-set-not-in-manifest", "studyset-names[2]: study set 'HYBRID_JANELIA' is not in the manifest m.json (it has: PAIRED_KAMPFF, SYNTH_MAGLAND)", _spec("[PAIRED_KAMPFF, SYNTH_MAGLAND]", "[PAIRED_KAMPFF, SYNTH_MAGLAND, HYBRID_JANELIA]")),
    _spec_case("spec-params-not-a-mapping", "spike-sorters[0].params: expected an object, got a list", _spec("params: {}", "params: [detect_threshold]")),
    _spec_case("spec-unknown-param", "no_such_param", _spec("params: {}", "params: {no_such_param: 1}")),
    _spec_case("spec-param-date", "spike-sorters[0].params.when: expected a string, number, boolean, null, list or mapping, got a date", _spec("params: {}", "params: {when: 2021-01-01}")),
    _spec_case("spec-study-set-names-not-a-list", 'studyset-names: expected a list, got "PAIRED_KAMPFF" (a string)', _spec("[PAIRED_KAMPFF, SYNTH_MAGLAND]", "PAIRED_KAMPFF")),
    _spec_case("spec-studysets-bad-uri", "studysets: expected 40 lowercase hex digits after sha1:// (in 'sha1://ABC/m.json')", _spec("studysets: m.json", "studysets: sha1://ABC/m.json")),
    # --- the sources themselves
    BadInput("source-missing-manifest", "no such file", argv=("-s", "nope.json", "-l", "s.yaml"), file="nope.json"),
    BadInput("source-missing-spec", "no such file", argv=("-s", "m.json", "-l", "nope.yaml"), file="nope.yaml"),
    BadInput("source-manifest-is-a-folder", "expected a file, found a folder or device", argv=("-s", ".", "-l", "s.yaml"), file="."),
    BadInput("source-http", "expected a sha1:// or sha1dir:// URI or a local path", argv=("-s", "http://example.org/m.json", "-l", "s.yaml"), file="http://example.org/m.json"),
    BadInput("source-not-hex", "expected 40 lowercase hex digits after sha1://", argv=("-s", NOT_HEX, "-l", "s.yaml"), file=NOT_HEX),
    BadInput("source-empty", "expected a sha1:// URI or a path, got an empty string", argv=("-s", "", "-l", "s.yaml"), file="''"),
    BadInput("source-sha1-not-in-store", "not in the local kachery store", argv=("-l", "s.yaml"), spec=_spec("studysets: m.json", f"studysets: sha1://{'5' * 40}/studysets.json"), file=f"sha1://{'5' * 40}/studysets.json"),
    BadInput("source-spec-without-studysets", "studysets: missing key; expected the manifest's URI here, or a manifest given with -s", argv=("-l", "s.yaml"), spec=_spec("studysets: m.json\n", ""), file="s.yaml"),
    BadInput("source-spec-names-a-missing-manifest", "no such file", argv=("-l", "s.yaml"), spec=_spec("studysets: m.json", "studysets: other.json"), file="other.json"),
)
