"""The Slurm engine, against a real single-node Slurm cluster (``slurm_cluster`` fixture).

Covers sf_assets.engines.slurm, slurm_step and slurm_allocations: the srun /
salloc lines for every option, a real MountainSort5 sort through Slurm (in a
warm slot of a pool allocation) that reports like the local engine, the
timeout of one sort inside an allocation, cancelling a running sort, steps
sharing a user's allocation at most N at a time, and a Dagster run of the
asset graph with ``use_slurm`` set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.core.labels import sorting_label
from sf_assets.core.manifest import parse_manifest
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.stores.data import load_sorting_object
from sf_assets.engines.engine import EngineSettings, run_sort
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.engines.job import CanaryReport, SortJob, SortReport
from sf_assets.engines.slurm import SlurmLaunch, slurm_time_limit, srun_command, srun_environment, step_name
from sf_assets.engines.slurm_allocations import (
    StepPlacement,
    parse_allocation_ids,
    running_steps,
    salloc_command,
    slurm_allocations,
)
from sf_assets.engines.slurm_service import SLOT_FILE
from sf_assets.engines.slurm_step import STEP_FILE
from sf_assets.engines.supervisor import prepare_work_dir
from sf_assets.orchestration.partitions import pair_key
from sf_assets.stores.kachery import KacheryStore
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"
# The campaign's allocations end this long after their last sort (see slurm_pool), so that
# each test finds the node free and leaves no job behind.
IDLE_S = 1.0
WORKER = ["/venv/bin/python", "-m", "sf_assets.engines.worker", "/work/a"]


def _job(work_dir, label="MountainSort5/study/rec", **fields) -> SortJob:
    base = dict(
        sorter_name=SORTER,
        si_sorter_name="mountainsort5",
        params={},
        recording_uri="sha1://0000000000000000000000000000000000000000/rec.json",
        label=label,
        kachery_dir="/kachery",
        work_dir=str(work_dir),
    )
    return SortJob(**{**base, **fields})


# ---------------------------------------------------------------- commands (no cluster)


def test_srun_command_for_a_job_of_its_own_carries_every_option():
    slurm = SlurmSettings(partition="gpu-long", accept_shared_nodes=False, gpus_per_node=2)
    job = _job("/work/a")
    command = srun_command(WORKER, slurm, job, timeout_s=61.0)
    wrapper_at = command.index("/venv/bin/python")
    options = command[:wrapper_at]
    assert options[0] == "srun"
    assert set(options[1:]) == {
        f"--job-name={step_name(job)}",
        "--ntasks=1",
        "--nodes=1",
        "--quiet",
        "--partition=gpu-long",
        "--exclusive",
        "--gpus-per-node=2",
        "--time=2",
        "--chdir=/work/a",
    }
    assert command[wrapper_at:] == ["/venv/bin/python", "-m", "sf_assets.engines.slurm_step", "/work/a", "--", *WORKER]


def test_srun_command_leaves_out_what_is_not_asked():
    command = srun_command(WORKER, SlurmSettings(accept_shared_nodes=True), _job("/work/a"), timeout_s=None)
    options = " ".join(command[: command.index("/venv/bin/python")])
    for absent in ("--exclusive", "--partition", "--gpus", "--time", "--jobid", "--mem"):
        assert absent not in options


def test_srun_command_inside_an_allocation_asks_for_a_share_of_it():
    slurm = SlurmSettings(partition="p", jobs_per_allocation=3, gpus_per_node=6, allocation_id="41")
    placement = StepPlacement(job_id="41", cpus_per_step=4, memory_mb_per_step=1000)
    command = srun_command(WORKER, slurm, _job("/work/a"), timeout_s=30.0, placement=placement)
    options = command[: command.index("/venv/bin/python")]
    for wanted in ("--jobid=41", "--exact", "--cpus-per-task=4", "--mem=1000M", "--gpus-per-task=2", "--time=1"):
        assert wanted in options
    # The allocation already has its partition and node exclusivity.
    assert not [option for option in options if option.startswith(("--partition", "--exclusive", "--gpus-per-node"))]


def test_time_limit_is_whole_minutes_rounded_up():
    assert slurm_time_limit(None) is None
    assert slurm_time_limit(0) is None
    assert [slurm_time_limit(s) for s in (1, 60, 60.5, 3600)] == ["1", "1", "2", "60"]


def test_salloc_command_carries_every_option():
    slurm = SlurmSettings(partition="debug", jobs_per_allocation=4, gpus_per_node=1)
    command = salloc_command(slurm, time_limit_min=90)
    assert command[:2] == ["salloc", "--no-shell"]
    for wanted in ("--nodes=1", "--ntasks=4", "--partition=debug", "--exclusive", "--gpus-per-node=1", "--time=90"):
        assert wanted in command
    shared = salloc_command(SlurmSettings(accept_shared_nodes=True), time_limit_min=None)
    assert "--exclusive" not in shared and not [c for c in shared if c.startswith(("--time", "--partition"))]


def test_srun_environment_drops_an_enclosing_job_but_keeps_the_cluster():
    env = srun_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_CONF": "/etc/x.conf", "PATH": "/bin"})
    assert env == {"SLURM_CONF": "/etc/x.conf", "PATH": "/bin"}


def test_allocation_ids_are_slurm_job_ids():
    assert parse_allocation_ids(" 12, 13 ,") == ["12", "13"]
    assert parse_allocation_ids(None) == [] and parse_allocation_ids("") == []
    with pytest.raises(EnvironmentSortFailure, match=r"'12,abc'.*\['abc'\]"):
        parse_allocation_ids("12,abc")


def test_step_names_differ_per_work_folder_and_name_the_label():
    first, second = step_name(_job("/work/a")), step_name(_job("/work/b"))
    assert first != second and first == step_name(_job("/work/a"))
    assert first.startswith("sf-assets/MountainSort5/study/rec/")


# ---------------------------------------------------------------- helpers for the cluster tests


@pytest.fixture(scope="module")
def slurm_store(synthetic_studyset, tmp_path_factory) -> KacheryStore:
    """A private copy of the session studyset's store: sorts write into it."""
    root = tmp_path_factory.mktemp("slurm-kachery") / "kachery"
    shutil.copytree(synthetic_studyset.store.root_dir, root, symlinks=True)
    return KacheryStore(root)


@pytest.fixture(scope="module")
def recordings(synthetic_studyset):
    path = synthetic_studyset.manifest_path
    return parse_manifest(path.read_bytes(), str(path)).recordings()


def _sort_job(
    store: KacheryStore, recording, work_dir: Path, canary_first_n_s: float | None = 2.0, sorter: str = SORTER
) -> SortJob:
    entry = resolve_sorter(sorter)
    return SortJob(
        sorter_name=entry.name,
        si_sorter_name=entry.si_name,
        params={},
        recording_uri=recording.recording_uri,
        label=sorting_label(entry.name, recording.study_name, recording.name),
        kachery_dir=str(store.root_dir),
        work_dir=str(work_dir),
        canary_first_n_s=canary_first_n_s,
    )


def _reports(job: SortJob, settings: EngineSettings) -> tuple[CanaryReport | None, SortReport]:
    reports = list(run_sort(job, settings))
    canaries = [r for r in reports if isinstance(r, CanaryReport)]
    assert isinstance(reports[-1], SortReport) and len(canaries) <= 1
    return (canaries[0] if canaries else None), reports[-1]


def _worker_lines(console_path: str) -> list[str]:
    """The worker's own lines, numbers masked (timings and unit counts vary)."""
    text = Path(console_path).read_text()
    return [re.sub(r"\d+(\.\d+)?", "N", line) for line in text.splitlines() if line.startswith("[sf-assets worker]")]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def _jobs_named(cluster, name: str) -> list[str]:
    lines = cluster.run("squeue", "--steps", "--noheader", "--format=%i %j").splitlines()
    lines += cluster.run("squeue", "--noheader", "--format=%i %j").splitlines()
    return [line for line in lines if line.split(" ", 1)[-1] == name]


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _sleeping_launch(work_dir: Path, slurm: SlurmSettings, sleep_s: float = 60.0) -> tuple[SortJob, SlurmLaunch]:
    """A Slurm launch whose 'worker' only sleeps: for what does not need a sorter."""
    job = _job(work_dir, label=f"sleep/{work_dir.name}/x")
    prepare_work_dir(job)
    worker = [sys.executable, "-c", f"import time; print('sleeping', flush=True); time.sleep({sleep_s})"]
    return job, SlurmLaunch.for_job(worker, slurm, job, timeout_s=None)


# ---------------------------------------------------------------- a real sort through Slurm


def test_a_sort_through_slurm_reports_like_the_local_engine(slurm_cluster, slurm_store, recordings, tmp_path):
    recording = recordings[0]
    slurm = SlurmSettings(partition="debug", idle_release_s=IDLE_S)
    slurm_settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    local_settings = dataclasses.replace(slurm_settings, slurm=None)
    slurm_job = _sort_job(slurm_store, recording, tmp_path / "slurm")
    local_job = _sort_job(slurm_store, recording, tmp_path / "local")

    slurm_canary, slurm_report = _reports(slurm_job, slurm_settings)
    local_canary, local_report = _reports(local_job, local_settings)

    for report in (slurm_report, local_report):
        assert not report.errored, Path(report.console_path).read_text()[-3000:]
        assert report.exit_code == 0 and report.cpu_time_s > 0.5
        assert report.num_units > 0 and report.sorting_object_uri
    assert slurm_canary.status == local_canary.status == "passed"
    assert slurm_canary.window_s == local_canary.window_s == 2.0
    assert _worker_lines(slurm_report.console_path) == _worker_lines(local_report.console_path)
    assert len(_worker_lines(slurm_report.console_path)) >= 3
    # The CPU time is the worker's, measured on the node by the allocation's sort service.
    placed = json.loads((tmp_path / "slurm" / SLOT_FILE).read_text())
    assert placed["exit_code"] == 0 and placed["cpu_time_s"] == slurm_report.cpu_time_s
    assert placed["node"].split(".")[0] == slurm_cluster.node_name and placed["job_id"] and placed["worker_pid"]
    sorting = load_sorting_object(slurm_report.sorting_object_uri, slurm_store, recording.sample_rate_hz)
    assert len(sorting.unit_ids) == slurm_report.num_units
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_a_sort_failing_on_slurm_reports_the_error_like_the_local_engine(
    slurm_cluster, slurm_store, recordings, tmp_path
):
    recording = recordings[0]
    missing = "sha1://" + "1" * 40 + "/missing.json"
    settings = EngineSettings(work_root=str(tmp_path), slurm=SlurmSettings(idle_release_s=IDLE_S))
    slurm_job = dataclasses.replace(_sort_job(slurm_store, recording, tmp_path / "slurm"), recording_uri=missing)
    local_job = dataclasses.replace(slurm_job, work_dir=str(tmp_path / "local"))

    _, on_slurm = _reports(slurm_job, settings)
    _, local = _reports(local_job, dataclasses.replace(settings, slurm=None))

    assert on_slurm.errored and local.errored
    assert on_slurm.error_message == local.error_message and missing in on_slurm.error_message
    assert on_slurm.exit_code == local.exit_code == 1
    assert on_slurm.details == local.details == {"stage": "load", "provenance": None}  # it never loaded
    assert Path(on_slurm.console_path).read_text() == Path(local.console_path).read_text().replace(
        str(tmp_path / "local"), str(tmp_path / "slurm")
    )


def test_the_timeout_holds_per_sort_inside_an_allocation_and_leaves_no_job(
    slurm_cluster, slurm_store, recordings, tmp_path
):
    """``-T`` stops the sort in its allocation's warm slot (the service's clock), not the allocation."""
    # A one-CPU allocation on a shared node: the sort starts at once, whatever the previous test left.
    slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, idle_release_s=IDLE_S)
    # 0.6 s: shorter than any sort with its canary, even on a warm worker loading from the JIT cache
    # (3 s was not: one finished in 2.9 s), and long enough for the worker to have used some CPU.
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=0.01, slurm=slurm)
    job = _sort_job(slurm_store, recordings[1], tmp_path / "timeout")
    started = time.monotonic()
    _, report = _reports(job, settings)
    elapsed_s = time.monotonic() - started

    assert report.errored and report.timed_out and report.failure_class == "timeout"
    assert "timed out after 0.6 s" in report.error_message
    # 0.6 s of sort, then the allocation's own start (salloc, its service, the workers' template importing
    # spikeinterface): 8 s for that start was exceeded by 0.03 s once under a full suite's load.
    assert elapsed_s < 0.6 + 12.0
    # The worker's process group got SIGTERM, as under the local service, and its CPU time was kept.
    assert report.exit_code == -15 and report.cpu_time_s > 0
    assert Path(report.console_path).exists()
    placed = json.loads((Path(job.work_dir) / SLOT_FILE).read_text())
    assert not Path(f"/proc/{placed['worker_pid']}").exists()  # the timed-out worker is discarded
    # The allocation outlived the sort: it ends later, once idle, by its holder.
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_interrupting_a_sort_stops_it_in_its_allocation(slurm_cluster, slurm_store, recordings, tmp_path):
    """A cancelled Dagster run closes its connection to the allocation's service: the worker stops at once."""
    settings = EngineSettings(work_root=str(tmp_path), slurm=SlurmSettings(idle_release_s=IDLE_S))
    job = _sort_job(slurm_store, recordings[2], tmp_path / "cancel")
    slot_file = Path(job.work_dir) / SLOT_FILE
    interrupted_at: list[float] = []
    placed: dict = {}
    # The step is interrupted as soon as a slot runs the sort: what a cancelled Dagster run
    # raises in the step that consumes the sort's events (raised here, between two events,
    # rather than from a timer thread, which a fast sort on a busy machine could outrun).
    with pytest.raises(KeyboardInterrupt), contextlib.closing(run_sort(job, settings)) as reports:
        for _report in reports:
            if slot_file.exists() and "worker_pid" in json.loads(slot_file.read_text()):
                placed.update(json.loads(slot_file.read_text()))
                interrupted_at.append(time.monotonic())
                raise KeyboardInterrupt
    worker = Path(f"/proc/{placed['worker_pid']}")
    assert _wait_for(lambda: not worker.exists(), 8.0, "the sort's worker to stop")
    assert time.monotonic() - interrupted_at[0] < 8.0
    # Its allocation is released once idle: nothing is left on the cluster.
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_srun_killed_outright_leaves_its_job_which_the_engine_cancels(slurm_cluster, tmp_path):
    job, launch = _sleeping_launch(tmp_path / "killed", SlurmSettings())
    srun = subprocess.Popen(launch.command, env=launch.env, start_new_session=True, stdout=subprocess.DEVNULL)
    _wait_for(lambda: (Path(job.work_dir) / STEP_FILE).exists(), 20.0, "the step to start")
    srun.kill()
    srun.wait()
    time.sleep(1.0)
    # Measured Slurm behaviour (22.05): a SIGKILLed srun does not take its job with it ...
    assert _jobs_named(slurm_cluster, launch.name)
    # ... hence the engine's final scancel by name.
    launch.cancel_leftovers()
    assert _wait_for(lambda: not _jobs_named(slurm_cluster, launch.name), 10.0, "the job to be cancelled")
    assert _wait_for(lambda: not _processes_mentioning(job.work_dir), 10.0, "the sleeping worker to end")


# ---------------------------------------------------------------- allocations


def test_sorts_share_an_allocation_at_most_n_at_a_time(slurm_cluster, slurm_store, recordings, tmp_path):
    slurm = SlurmSettings(jobs_per_allocation=2, max_simultaneous_allocations=1)
    busiest: list[int] = []
    reports: dict[int, SortReport] = {}
    errors: list[BaseException] = []

    with slurm_allocations(slurm, time_limit_min=10) as allocation_ids:
        assert len(allocation_ids) == 1
        settings = EngineSettings(
            work_root=str(tmp_path), timeout_min=5.0, slurm=dataclasses.replace(slurm, allocation_id=allocation_ids[0])
        )
        stop_watching = threading.Event()

        def watch_steps():
            while not stop_watching.is_set():
                busiest.append(running_steps(allocation_ids)[allocation_ids[0]])
                time.sleep(0.1)

        def sort(index):
            try:
                job = _sort_job(slurm_store, recordings[index], tmp_path / f"grid{index}", canary_first_n_s=None)
                reports[index] = _reports(job, settings)[1]
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        watcher = threading.Thread(target=watch_steps)
        sorters = [threading.Thread(target=sort, args=(index,)) for index in range(4)]
        watcher.start()
        for thread in sorters:
            thread.start()
        for thread in sorters:
            thread.join()
        stop_watching.set()
        watcher.join()

    assert not errors, errors
    assert sorted(reports) == [0, 1, 2, 3]
    for report in reports.values():
        assert not report.errored, Path(report.console_path).read_text()[-3000:]
    assert max(busiest) == 2  # two ran together, never three
    steps = [json.loads((tmp_path / f"grid{index}" / STEP_FILE).read_text()) for index in range(4)]
    assert {step["job_id"] for step in steps} == set(allocation_ids)
    assert len({step["step_id"] for step in steps}) == 4
    # The allocation was scancelled when the block ended.
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_a_step_goes_to_the_least_busy_allocation(slurm_cluster, tmp_path):
    slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, max_simultaneous_allocations=2)
    with slurm_allocations(slurm, time_limit_min=5) as allocation_ids:
        assert len(set(allocation_ids)) == 2
        shared = dataclasses.replace(slurm, allocation_id=",".join(allocation_ids))
        first_job, first = _sleeping_launch(tmp_path / "first", shared)
        srun = subprocess.Popen(first.command, env=first.env, start_new_session=True, stdout=subprocess.DEVNULL)
        try:
            step_file = Path(first_job.work_dir) / STEP_FILE
            _wait_for(step_file.exists, 20.0, "the first step to start")
            first_in = json.loads(step_file.read_text())["job_id"]
            _, second = _sleeping_launch(tmp_path / "second", shared)
            (other,) = set(allocation_ids) - {first_in}
            assert f"--jobid={other}" in second.command and "--cpus-per-task=1" in second.command
        finally:
            first.stop(srun, 2.0)
            srun.wait()
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_a_refused_allocation_names_the_reason_and_leaves_nothing(slurm_cluster):
    with pytest.raises(EnvironmentSortFailure, match=r"salloc.*nosuch.*[Ii]nvalid partition"):
        with slurm_allocations(SlurmSettings(partition="nosuch", max_simultaneous_allocations=2)):
            pass
    assert slurm_cluster.job_ids() == []


def test_allocations_are_cancelled_when_the_block_fails(slurm_cluster):
    with pytest.raises(RuntimeError, match="campaign failed"):
        slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, max_simultaneous_allocations=2)
        with slurm_allocations(slurm, time_limit_min=5) as ids:
            assert sorted(slurm_cluster.job_ids()) == sorted(ids)
            raise RuntimeError("campaign failed")
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


# ---------------------------------------------------------------- through the asset graph


def test_the_asset_graph_sorts_through_slurm(slurm_cluster, slurm_store, synthetic_studyset, tmp_path):
    """``use_slurm`` on the sorting_engine resource: a Dagster run sorts on the cluster."""
    root = tmp_path / "graph"
    root.mkdir()
    spec = write_spec(root / "spec.yaml", synthetic_studyset.manifest_path, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    (root / "dagster").mkdir()
    with project_instance(temp_dir=str(root / "dagster")) as instance:
        env = make_env(
            root,
            slurm_store,
            instance,
            synthetic_studyset.manifest_path,
            spec,
            canary_first_n_s=2.0,
            timeout_min=5.0,
            use_slurm=True,
            slurm_idle_release_s=IDLE_S,
            slurm_partition=slurm_cluster.partition,
        )
        sorter_spec, recording = env.campaign.jobs[0]
        outcome = env.launch(workers=1, pairs=[(sorter_spec, recording)])
        assert [o.error for o in outcome.sortings if not o.success] == []
        key = str(pair_key(sorter_spec.name, recording))
        metadata = env.latest("sorting")[key]
        records = json.loads((root / "outputs" / "sorting_records.json").read_text())

    assert metadata["engine"] == "slurm" and metadata["num_units"] > 0 and metadata["cpu_time_s"] > 0.5
    (record,) = records
    assert record["errored"] is False and record["cpuTimeSec"] > 0
    assert "[sf-assets worker] sorted" in slurm_store.load_json(record["consoleOutUri"])["text"]
    work_dir = Path(metadata["work_dir"])
    placed = json.loads((work_dir / SLOT_FILE).read_text())
    assert placed["job_id"] and placed["exit_code"] == 0 and placed["cpu_time_s"] == metadata["cpu_time_s"]
    assert metadata["worker_pid"] == placed["worker_pid"]  # the allocation's warm worker, as the step reports it
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []
