"""The command line starts the host's sort service before it opens the instance, only where runs use it."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from sf_assets.cli.environment import RUN_LAUNCHER, launcher_config, start_sort_service_early
from sf_assets.engines.engine import launcher_service
from sf_assets.engines.service_address import INFO_NAME
from sf_assets.engines.service_client import SortServiceError, connect, service_status
from harness.dagster_dev import stop_sort_services

REPO = Path(__file__).resolve().parents[1]
OURS = {"module": "sf_assets.orchestration.run_launcher", "class": "SortServiceRunLauncher"}


def write_yaml(folder: Path, run_launcher: dict | None) -> Path:
    document = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if run_launcher is None:
        del document["run_launcher"]
    else:
        document["run_launcher"] = run_launcher
    path = folder / "dagster.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_projects_dagster_yaml_names_its_launcher_with_no_config():
    assert launcher_config(REPO / "dagster.yaml") == {}


@pytest.mark.parametrize(
    ("run_launcher", "expected"),
    [
        ({**OURS, "config": {"service_slots": 3, "service_dir": "/x"}}, {"service_slots": 3, "service_dir": "/x"}),
        (None, None),  # Dagster's default launcher
        ({"module": "dagster_docker", "class": "DockerRunLauncher"}, None),
        ({**OURS, "config": {"service_dir": {"env": "SOMEWHERE"}}}, None),  # refused by the launcher's schema
    ],
)
def test_launcher_config(tmp_path, run_launcher, expected):
    assert launcher_config(write_yaml(tmp_path, run_launcher)) == expected


def test_an_unreadable_dagster_yaml_gives_none(tmp_path):
    assert launcher_config(tmp_path / "missing.yaml") is None
    (tmp_path / "bad.yaml").write_text("run_launcher: [unclosed\n")
    assert launcher_config(tmp_path / "bad.yaml") is None


def test_the_launcher_and_the_early_start_reach_one_service(tmp_path, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="sfe-", dir="/tmp"))  # short: it holds a Unix socket
    config = {"service_dir": str(base), "service_idle_exit_s": 60.0}
    write_yaml(tmp_path, {**OURS, "config": config})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("SF_ASSETS_DAGSTER_DIR", str(tmp_path / "storage"))
    try:
        start_sort_service_early()
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = connect(launcher_service(config), start=False)
                break
            except SortServiceError:
                assert time.monotonic() < deadline, "the early start brought up no service"
                time.sleep(0.2)
        connection.close()
        (info,) = base.glob(f"*/{INFO_NAME}")
        started_early = json.loads(info.read_text())["pid"]
        # The run launcher that dagster.yaml describes finds that same service: it starts no second one.
        from sf_assets.orchestration.run_launcher import SortServiceRunLauncher

        SortServiceRunLauncher(**config).start_service()
        (info,) = base.glob(f"*/{INFO_NAME}")
        assert json.loads(info.read_text())["pid"] == started_early
        assert service_status(launcher_service(config))["pid"] == started_early
    finally:
        stop_sort_services(base)


def test_no_start_for_another_launcher(tmp_path, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="sfe-", dir="/tmp"))
    write_yaml(tmp_path, None)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("SF_ASSETS_DAGSTER_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("SF_ASSETS_SERVICE_DIR", str(base))
    before = {t.name for t in threading.enumerate()}
    start_sort_service_early()
    assert "sort-service-start" not in {t.name for t in threading.enumerate()} - before
    time.sleep(1.0)  # a start would have made the service's folder by now
    assert list(base.iterdir()) == []
    base.rmdir()


def test_the_name_read_from_dagster_yaml_is_the_launchers():
    from sf_assets.orchestration.run_launcher import SortServiceRunLauncher

    assert RUN_LAUNCHER == (SortServiceRunLauncher.__module__, SortServiceRunLauncher.__name__)
