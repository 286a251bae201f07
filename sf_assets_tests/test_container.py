"""The container engine and the Docker deployment, without a Docker daemon.

No daemon runs on this machine, so the container path is tested up to the
point where one is needed: the image each sort gets from the sorter catalog,
the keyword that hands it to spikeinterface, spikeinterface's own container
set-up (files written, then the failed connection), the early refusal with a
message naming the missing daemon, a Dagster run that fails at once on it,
and deployments/docker (dagster.yaml loaded into a real instance on a real
PostgreSQL server, the compose file, the Dockerfile).  Building the image and
running the deployment end to end need a daemon and were not done here.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext

from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.engines.container import (
    DEFAULT_DOCKER_HOST,
    container_run_sorter_kwargs,
    docker_host,
    require_container_runtime,
)
from sf_assets.engines.engine import EngineSettings, container_image_for, work_dir_for
from sf_assets.engines.job import CONSOLE_FILE, JOB_FILE, RESULT_FILE, SortJob
from sf_assets.engines.work_dirs import IN_USE_FILE
from sf_assets.engines.worker import EXIT_SORT_FAILED, run_sorter_kwargs, sort
from sf_assets.cli.launch import RunOptions
from sf_assets_tests.graph_harness import make_env, write_spec
from sf_assets_tests.postgres_server import running_postgres
from harness.instances import project_instance

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "deployments" / "docker"
DOCKER_DAGSTER_YAML = DOCKER_DIR / "dagster.yaml"
ROOT_DAGSTER_YAML = REPO / "dagster.yaml"
POSTGRES_DAGSTER_YAML = REPO / "deployments" / "postgres" / "dagster.yaml"

KILOSORT2_IMAGE = "spikeinterface/kilosort2-compiled-base"
MOUNTAINSORT5_IMAGE = "spikeinterface/mountainsort5-base"
SHARED_DATA_VOLUME = "/srv/sf-assets:/srv/sf-assets"
DOCKER_SOCKET_VOLUME = "/var/run/docker.sock:/var/run/docker.sock"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def closed_docker_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def no_docker_daemon(monkeypatch, tmp_path) -> str:
    """DOCKER_HOST at a unix socket that does not exist."""
    host = f"unix://{tmp_path / 'no-daemon' / 'docker.sock'}"
    monkeypatch.setenv("DOCKER_HOST", host)
    return host


# -- (b) which image a sort gets ----------------------------------------------------------


def test_container_only_sorters_always_get_their_catalog_image(tmp_path):
    local = EngineSettings(work_root=str(tmp_path))
    assert container_image_for(resolve_sorter("Kilosort2"), local) == KILOSORT2_IMAGE
    assert container_image_for(resolve_sorter("KiloSort2"), local) == KILOSORT2_IMAGE  # the alias
    assert container_image_for(resolve_sorter("MountainSort4"), local) == "spikeinterface/mountainsort4-base"
    assert container_image_for(resolve_sorter("IronClust"), local) == "spikeinterface/ironclust-compiled-base"
    assert container_image_for(resolve_sorter("MountainSort5"), local) is None


def test_use_container_gives_a_local_sorter_its_image(tmp_path):
    """The --use-container path: RunOptions -> the engine settings the sorting asset reads."""
    options = RunOptions(
        spec_source="spec.yaml",
        kachery_dir=str(tmp_path / "kachery"),
        work_root=str(tmp_path / "sorts"),
        workspace_db_url="sqlite://",
        outputs_dir=str(tmp_path / "out"),
        use_container=True,
    )
    settings = options.engine_settings()
    assert settings.kind == "container" and settings.container_engine == "docker"
    assert container_image_for(resolve_sorter("MountainSort5"), settings) == MOUNTAINSORT5_IMAGE
    assert container_image_for(resolve_sorter("Kilosort2"), settings) == KILOSORT2_IMAGE
    # Simple has no image: require_runnable refuses that before any sort (test_sorter_catalog).
    assert container_image_for(resolve_sorter("Simple"), settings) is None


# -- (c) what the worker hands to spikeinterface's run_sorter ------------------------------


def _job(tmp_path: Path, image: str | None, engine: str = "docker", **params) -> SortJob:
    return SortJob(
        sorter_name="MountainSort4",
        si_sorter_name="mountainsort4",
        params=params,
        recording_uri="sha1://0000000000000000000000000000000000000000/recording.json",
        label="MountainSort4/study/rec",
        kachery_dir=str(tmp_path / "kachery"),
        work_dir=str(tmp_path / "work"),
        container_image=image,
        container_engine=engine,
    )


def test_run_sorter_kwargs_name_the_image_for_the_engine(tmp_path):
    folder = tmp_path / "work" / "sorter"
    image = "spikeinterface/mountainsort4-base"
    assert run_sorter_kwargs(_job(tmp_path, image, "docker", detect_threshold=4), folder) == {
        "folder": str(folder),
        "remove_existing_folder": True,
        "verbose": True,
        "docker_image": image,
        "detect_threshold": 4,
    }
    singularity = run_sorter_kwargs(_job(tmp_path, image, "singularity"), folder)
    assert singularity["singularity_image"] == image and "docker_image" not in singularity
    local = run_sorter_kwargs(_job(tmp_path, None, "docker"), folder)
    assert "docker_image" not in local and "singularity_image" not in local


def test_an_unknown_container_engine_is_refused():
    assert container_run_sorter_kwargs(None, "podman") == {}, "no image: no engine needed"
    with pytest.raises(EnvironmentSortFailure, match=r"container engine 'podman' is not one of \['docker', 'singularity'\]"):
        container_run_sorter_kwargs(KILOSORT2_IMAGE, "podman")
    with pytest.raises(EnvironmentSortFailure, match="'podman' is not one of"):
        require_container_runtime("podman")


def test_the_worker_sets_up_the_sorter_container_up_to_the_missing_daemon(
    synthetic_studyset, tmp_path, monkeypatch, closed_docker_port
):
    """The real worker and spikeinterface's real container path, stopped where a daemon is needed.

    MountainSort4 needs no GPU, so spikeinterface goes as far as it can
    without Docker: it writes the recording, parameters and script the sorter
    container would read into the sort folder, then fails to reach the daemon.
    """
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_docker_port}")
    rec = _first_recording(synthetic_studyset)
    image = resolve_sorter("MountainSort4").container_image
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    job = SortJob(
        sorter_name="MountainSort4",
        si_sorter_name="mountainsort4",
        params={"detect_threshold": 4},
        recording_uri=rec["recordingUri"],
        label=f"MountainSort4/{rec['studyName']}/{rec['name']}",
        kachery_dir=str(synthetic_studyset.store.root_dir),
        work_dir=str(work_dir),
        canary_first_n_s=None,
        container_image=image,
        container_engine="docker",
    )
    (work_dir / JOB_FILE).write_text(job.to_json())

    assert sort(work_dir) == EXIT_SORT_FAILED
    result = json.loads((work_dir / RESULT_FILE).read_text())
    assert result["errored"] is True and result["stage"] == "sort"
    assert "DockerException" in result["error_message"]
    assert str(closed_docker_port) in result["error_message"] or "Connection refused" in result["error_message"]

    script = (work_dir / "in_container_sorter_script.py").read_text()
    assert "'mountainsort4'" in script and str(work_dir / "sorter") in script
    assert json.loads((work_dir / "in_container_params.json").read_text()) == {"detect_threshold": 4}
    recording_description = (work_dir / "in_container_recording.json").read_text()
    # The sorter container would read the recording's data from the kachery store (bind-mounted).
    assert str(Path(synthetic_studyset.store.root_dir).resolve()) in recording_description


def _first_recording(studyset) -> dict:
    manifest = json.loads(Path(studyset.manifest_path).read_text())
    return manifest["StudySets"][0]["studies"][0]["recordings"][0]


# -- (d) a missing runtime is refused with a message naming it -----------------------------


def test_no_docker_daemon_on_a_tcp_port(monkeypatch, closed_docker_port):
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_docker_port}")
    with pytest.raises(EnvironmentSortFailure) as caught:
        require_container_runtime("docker")
    message = str(caught.value)
    assert message.startswith("containerized sorting needs a running Docker daemon, and none answered at ")
    assert f"DOCKER_HOST=tcp://127.0.0.1:{closed_docker_port}" in message
    assert caught.value.failure_class == "environment"


def test_no_docker_daemon_at_a_unix_socket(no_docker_daemon):
    with pytest.raises(EnvironmentSortFailure, match="running Docker daemon") as caught:
        require_container_runtime("docker")
    assert f"DOCKER_HOST={no_docker_daemon}" in str(caught.value)
    assert "point DOCKER_HOST at one" in str(caught.value)


def test_docker_host_names_the_default_socket_when_unset(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_host() == f"{DEFAULT_DOCKER_HOST} (DOCKER_HOST is unset)"


def test_no_singularity_nor_apptainer(monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EnvironmentSortFailure) as caught:
        require_container_runtime("singularity")
    message = str(caught.value)
    assert "`singularity`" in message and "`apptainer`" in message and "PATH" in message


def test_singularity_found_on_path_is_accepted(monkeypatch, tmp_path):
    """Only the command's presence is checked: an executable named apptainer is enough."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apptainer = bin_dir / "apptainer"
    apptainer.write_text("#!/bin/sh\nexit 0\n")
    apptainer.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    require_container_runtime("singularity")


# -- (e) through Dagster: the partition fails at once, no worker starts ---------------------


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


def test_a_container_sort_without_a_docker_daemon_fails_its_partition_at_once(
    synthetic_studyset, tmp_path, instance, no_docker_daemon
):
    spec = write_spec(
        tmp_path / "spec.yaml",
        synthetic_studyset.manifest_path,
        {"Kilosort2": {"studysets": ["SYNTH_SET_A"]}, "MountainSort5": {"studysets": ["SYNTH_SET_A"]}},
    )
    env = make_env(tmp_path / "env", synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec)
    jobs = {(s.name, r.name): (s, r) for s, r in env.campaign.jobs}

    # Kilosort2 is container-only: its image is used without --use-container.
    kilosort2, rec = jobs[("Kilosort2", "001_synth")]
    # MountainSort5 runs locally, and in its image with --use-container.
    mountainsort5, _ = jobs[("MountainSort5", "001_synth")]
    cases = [
        (env, kilosort2, KILOSORT2_IMAGE),
        (env.with_options(use_container=True), mountainsort5, MOUNTAINSORT5_IMAGE),
    ]
    for case_env, sorter_spec, image in cases:
        outcome = case_env.launch(workers=1, pairs=[(sorter_spec, rec)], run_results=False)
        assert all(o.success for o in outcome.recordings)
        [sort_run] = outcome.sortings
        assert not sort_run.success
        label = f"{sorter_spec.name}/{rec.study_name}/{rec.name}"
        assert f"{label}: environment failure: containerized sorting needs a running Docker daemon" in sort_run.error
        assert f"DOCKER_HOST={no_docker_daemon}" in sort_run.error
        # At once: no canary, no sort, no retry.
        assert sort_run.elapsed_s < 30.0, sort_run.elapsed_s

        settings = case_env.options.engine_settings()
        work_dir = work_dir_for(settings, sorter_spec.name, rec.study_name, rec.name, sort_run.run_id)
        job = SortJob.from_json((work_dir / JOB_FILE).read_text())
        assert (job.container_image, job.container_engine) == (image, "docker")
        # No worker started: the only output is the console that states why the pair was not sorted.
        assert sorted(p.name for p in work_dir.iterdir()) == sorted([CONSOLE_FILE, IN_USE_FILE, JOB_FILE])
        console = (work_dir / CONSOLE_FILE).read_text()
        assert console.startswith(f"[sf-assets] {label} was not sorted: environment failure: containerized sorting")

    # Each pair ends with an errored record (an observation), as SpikeForest kept failed cells.
    assert env.latest("sorting") == {}
    observed = env.latest("sorting", observations=True)
    assert len(observed) == 2
    for md in observed.values():
        assert md["errored"] is True and md["failure_class"] == "environment"
        assert md["record"]["errored"] is True and md["record"]["sortingOutput"] is None
        text = env.store.load_json(md["console_out_uri"])["text"]
        assert "was not sorted: environment failure: containerized sorting needs a running Docker daemon" in text
    # The canary was planned with each run and never evaluated (the UI shows the run's failure).
    assert [e.status.value for e in env.check_evaluations()] == ["PLANNED", "PLANNED"]


# -- (a) deployments/docker/dagster.yaml on a real instance ---------------------------------


@contextmanager
def _docker_deployment_instance(tmp_path: Path) -> Iterator[tuple[dg.DagsterInstance, dict[str, str]]]:
    """An instance loaded from deployments/docker/dagster.yaml as shipped, on a throw-away server."""
    with running_postgres() as server, pytest.MonkeyPatch.context() as patch:
        server.create_database("sf_assets_dagster")
        home = tmp_path / "dagster-home"
        home.mkdir()
        shutil.copy(DOCKER_DAGSTER_YAML, home / "dagster.yaml")
        daemon_env = {
            **server.dagster_env("sf_assets_dagster"),
            "DAGSTER_HOME": str(home),
            "SF_ASSETS_HOME": str(tmp_path / "data"),
            "SF_ASSETS_DAGSTER_DIR": str(tmp_path / "data" / "dagster"),
            "SF_ASSETS_WORKSPACE_DB": server.url("sf_assets_workspace"),
        }
        for name, value in daemon_env.items():
            patch.setenv(name, value)
        instance = dg.DagsterInstance.get()
        try:
            yield instance, daemon_env
        finally:
            instance.dispose()


@dg.op
def _noop():
    return None


@dg.job
def _noop_job():
    _noop()


def test_the_docker_dagster_yaml_loads_with_the_docker_run_launcher(tmp_path):
    with _docker_deployment_instance(tmp_path) as (instance, daemon_env):
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        launcher = instance.run_launcher
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.image == "sf-assets:latest"
        assert launcher.networks == ["sf_assets_network"]
        assert set(launcher.env_vars) == set(daemon_env)
        assert launcher.container_kwargs["volumes"] == [SHARED_DATA_VOLUME, DOCKER_SOCKET_VOLUME]
        assert type(instance.run_coordinator).__name__ == "CampaignRunCoordinator"
        assert instance.run_monitoring_enabled

        # What a run container would get (the launcher's own merge), short of creating it.
        run = instance.create_run_for_job(job_def=_noop_job)
        context = launcher.get_container_context(run)
        forwarded = dict(name.split("=", 1) if "=" in name else (name, daemon_env[name]) for name in context.env_vars)
        assert forwarded == daemon_env
        assert context.networks == ["sf_assets_network"]
        assert isinstance(context, DockerContainerContext)


def test_the_docker_dagster_yaml_keeps_the_shared_settings():
    docker_cfg = _yaml(DOCKER_DAGSTER_YAML)
    root_cfg = _yaml(ROOT_DAGSTER_YAML)
    postgres_cfg = _yaml(POSTGRES_DAGSTER_YAML)
    for key in ("run_monitoring", "run_retries", "telemetry", "nux"):
        assert docker_cfg[key] == root_cfg[key], key
    for key in ("storage", "local_artifact_storage", "compute_logs"):
        assert docker_cfg[key] == postgres_cfg[key], key
    assert docker_cfg["run_coordinator"]["class"] == root_cfg["run_coordinator"]["class"]


# -- the compose file, the workspace and the Dockerfile agree --------------------------------


def _compose() -> dict:
    return _yaml(DOCKER_DIR / "docker-compose.yaml")


def _launcher_config() -> dict:
    return _yaml(DOCKER_DAGSTER_YAML)["run_launcher"]["config"]


def test_the_compose_services_give_the_daemon_what_the_run_launcher_forwards():
    compose = _compose()
    services = compose["services"]
    launcher = _launcher_config()
    daemon = services["sf_assets_daemon"]
    assert daemon["command"][:2] == ["dagster-daemon", "run"]
    assert set(launcher["env_vars"]) <= set(daemon["environment"]), "a forwarded variable unset in the daemon"
    assert DOCKER_SOCKET_VOLUME in daemon["volumes"] and SHARED_DATA_VOLUME in daemon["volumes"]
    assert compose["networks"]["sf_assets"]["name"] == launcher["network"]
    code = services["sf_assets_code"]
    assert code["image"] == code["environment"]["DAGSTER_CURRENT_IMAGE"] == launcher["image"]
    assert code["build"]["dockerfile"] == "deployments/docker/Dockerfile"
    assert (DOCKER_DIR / code["build"]["context"] / code["build"]["dockerfile"]).resolve() == (
        DOCKER_DIR / "Dockerfile"
    ).resolve()
    # The shared folder sits at the same path everywhere, as SF_ASSETS_HOME says.
    host_path, container_path = SHARED_DATA_VOLUME.split(":")
    assert host_path == container_path == daemon["environment"]["SF_ASSETS_HOME"]
    assert daemon["environment"]["SF_ASSETS_DAGSTER_DIR"].startswith(host_path + "/")
    postgres = services["sf_assets_postgres"]
    assert daemon["environment"]["SF_ASSETS_PG_HOST"] == postgres["container_name"]
    assert daemon["environment"]["SF_ASSETS_PG_DB"] == postgres["environment"]["POSTGRES_DB"]
    init_sql = (DOCKER_DIR / "init-workspace-db.sql").read_text()
    assert daemon["environment"]["SF_ASSETS_WORKSPACE_DB"].rsplit("/", 1)[1] in init_sql


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_the_dockerfile_installs_with_the_constraints_and_serves_the_code_location():
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == "3.11", "the image's Python is the tested one"

    runs = [shlex.split(args) for name, args in instructions if name == "RUN"]
    assert ["pip", "install", "-c", "constraints.txt", "."] in runs

    # Everything COPYed exists, and the ignore file lets it into the build context.
    ignore = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    copies = [shlex.split(args)[:-1] for name, args in instructions if name == "COPY"]
    for source in (s for sources in copies for s in sources):
        assert (REPO / source).exists(), source
        assert f"!{source}" in ignore, source
    assert ["pyproject.toml", "constraints.txt", "README.md"] in copies  # pyproject's readme is needed to build

    [cmd] = [json.loads(args) for name, args in instructions if name == "CMD"]
    assert cmd[:3] == ["dagster", "code-server", "start"]
    options = dict(zip(cmd[3::2], cmd[4::2]))
    assert options["-h"] == "0.0.0.0"
    module = options["-m"]
    assert module == "sf_assets.definitions" and importlib.util.find_spec(module) is not None
    assert ("EXPOSE", options["-p"]) in instructions

    [location] = _yaml(DOCKER_DIR / "workspace.yaml")["load_from"]
    assert location["grpc_server"]["port"] == int(options["-p"])
    assert location["grpc_server"]["host"] in _compose()["services"]
