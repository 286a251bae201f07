"""Reading the manifest and the spec from paths and from a real local kachery store."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sf_assets.core.errors import ManifestError, SpecError, UriError
from sf_assets.stores.inputs import (
    KACHERY_DIR_ENV,
    MAX_SOURCE_BYTES,
    default_store,
    load_config,
    load_manifest,
    load_spec,
    manifest_source_of,
    read_source,
)
from sf_assets.stores.kachery import KacheryStore

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@pytest.fixture
def store(kachery_store) -> KacheryStore:
    return kachery_store


@pytest.fixture
def config_dir(tmp_path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    for name in ("studysets_tiny.json", "example-spec.yaml", "small-spec.yaml"):
        shutil.copy(RESOURCES / name, folder / name)
    return folder


def test_read_source_from_a_path(config_dir):
    source = str(config_dir / "studysets_tiny.json")
    raw, name = read_source(source, None)
    assert raw == (RESOURCES / "studysets_tiny.json").read_bytes()
    assert name == source


def test_read_source_from_a_sha1_uri(store):
    uri = store.store_bytes(b'{"x": 1}', "x.json")
    assert read_source(uri, store) == (b'{"x": 1}', uri)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("no/such/file.json", "no/such/file.json: no such file"),
        (".", ".: expected a file, found a folder or device"),
        ("http://example.org/s.json", "http://example.org/s.json: expected a sha1:// or sha1dir:// URI or a local path"),
        ("", "'': expected a sha1:// URI or a path, got an empty string"),
        ("sha1://nothex/s.json", "sha1://nothex/s.json: expected 40 lowercase hex digits after sha1://"),
    ],
)
def test_read_source_rejections(source, expected, store):
    with pytest.raises(UriError) as info:
        read_source(source, store)
    assert str(info.value) == expected


def test_sha1_source_without_a_store_and_no_default_store_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(KACHERY_DIR_ENV, str(tmp_path / "absent"))
    uri = f"sha1://{'0' * 40}/studysets.json"
    with pytest.raises(UriError, match=f"^{uri}: not in the local kachery store {tmp_path}/absent, which does not exist yet"):
        read_source(uri, None)
    assert list(tmp_path.iterdir()) == []


def test_sha1_source_without_a_store_uses_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv(KACHERY_DIR_ENV, str(tmp_path / "default"))
    uri = KacheryStore(tmp_path / "default").store_bytes(b"{}", "m.json")
    assert read_source(uri, None) == (b"{}", uri)


def test_missing_kachery_content_names_the_uri(store):
    uri = f"sha1://{'0' * 40}/studysets.json"
    with pytest.raises(UriError, match=f"^{uri}: content with sha1 0{{40}} is not in the local store"):
        read_source(uri, store)


def test_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)
    with pytest.raises(UriError, match=f"big.json: file is {MAX_SOURCE_BYTES + 1} bytes; expected at most"):
        read_source(str(big), None)


def test_unreadable_path_gives_the_system_reason(tmp_path):
    name = "x" * 300 + ".json"
    with pytest.raises(UriError, match=f"{name}: cannot read: File name too long"):
        read_source(name, None)


def test_load_manifest_and_spec_name_their_sources(config_dir, store):
    manifest = load_manifest(str(config_dir / "studysets_tiny.json"), store)
    assert manifest.source == str(config_dir / "studysets_tiny.json")
    assert len(manifest.recordings()) == 4
    spec = load_spec(str(config_dir / "small-spec.yaml"))
    assert spec.source == str(config_dir / "small-spec.yaml")
    bad = config_dir / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ManifestError, match=f"^{bad}: top level: expected an object"):
        load_manifest(str(bad), store)


def test_load_config_with_an_explicit_manifest(config_dir, store):
    manifest, spec = load_config(str(config_dir / "studysets_tiny.json"), str(config_dir / "small-spec.yaml"), store)
    assert spec.studyset_names == ("PAIRED_KAMPFF",)
    assert manifest.source.endswith("studysets_tiny.json")


def test_load_config_takes_a_relative_manifest_from_the_spec_folder(config_dir, store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    manifest, spec = load_config(None, "config/example-spec.yaml", store)
    assert manifest.source == "config/studysets_tiny.json"
    assert len(manifest.recordings()) == 4


def test_load_config_takes_a_sha1_manifest_from_the_store(config_dir, store):
    uri = store.store_file(config_dir / "studysets_tiny.json", "studysets.json")
    spec_path = config_dir / "spec.yaml"
    spec_path.write_text(
        (config_dir / "small-spec.yaml").read_text().replace(
            "sha1://54d9ed77a2aa788b9ab67977476c2b51adb8a2c5/studysets.json", uri
        )
    )
    manifest, _ = load_config(None, str(spec_path), store)
    assert manifest.source == uri
    assert [s.name for s in manifest.study_sets] == ["PAIRED_KAMPFF", "SYNTH_MAGLAND"]


def test_load_config_from_a_spec_in_the_store_keeps_relative_manifests_relative(store):
    spec_uri = store.store_bytes(b"studysets: m.json\nstudyset-names: [A]\nspike-sorters: []\n", "spec.yaml")
    with pytest.raises(SpecError, match="spike-sorters: expected at least one sorter"):
        load_spec(spec_uri, store)
    spec_uri = store.store_bytes(
        b"studysets: m.json\nstudyset-names: [A]\nspike-sorters: [{name: X, studysets: [A]}]\n", "spec.yaml"
    )
    assert manifest_source_of(load_spec(spec_uri, store)) == "m.json"


def test_spec_without_studysets_and_no_manifest(config_dir, store):
    spec_path = config_dir / "nostudysets.yaml"
    spec_path.write_text("studyset-names: [PAIRED_KAMPFF]\nspike-sorters: [{name: MountainSort4, studysets: [PAIRED_KAMPFF]}]\n")
    with pytest.raises(SpecError, match=f"^{spec_path}: studysets: missing key; expected the manifest's URI here, or a manifest given with -s"):
        load_config(None, str(spec_path), store)


def test_load_config_cross_validates(config_dir, store):
    spec_path = config_dir / "other.yaml"
    spec_path.write_text("studyset-names: [HYBRID_JANELIA]\nspike-sorters: [{name: MountainSort4, studysets: [HYBRID_JANELIA]}]\n")
    with pytest.raises(SpecError, match=r"other.yaml: studyset-names\[0\]: study set 'HYBRID_JANELIA' is not in the manifest"):
        load_config(str(config_dir / "studysets_tiny.json"), str(spec_path), store)


def test_default_store_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(KACHERY_DIR_ENV, str(tmp_path / "from-env"))
    assert default_store().root_dir == (tmp_path / "from-env").resolve()
    monkeypatch.delenv(KACHERY_DIR_ENV)
    monkeypatch.delenv("SF_ASSETS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_store().root_dir == (tmp_path / ".data" / "kachery").resolve()
    monkeypatch.setenv("SF_ASSETS_HOME", str(tmp_path / "home"))
    assert default_store().root_dir == (tmp_path / "home" / "kachery").resolve(), "the same store the runs use"


def test_reading_paths_does_not_build_the_default_store(config_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KACHERY_DIR_ENV, str(tmp_path / "must-not-exist"))
    load_config(str(config_dir / "studysets_tiny.json"), str(config_dir / "small-spec.yaml"), None)
    assert not (tmp_path / "must-not-exist").exists()
