"""The campaign's Slurm allocations and their warm slots, against the real single-node cluster.

Covers sf_assets.engines.slurm_pool, slurm_holder, slurm_service and
slurm_campaign: M allocations of N warm slots requested as sorts arrive
(``sacct`` shows exactly M allocations and nothing else: each sort goes to
its allocation's sort service, not to a job step of its own), two sorts of
one sorter in one slot sorted by one worker process, an allocation cancelled
under running sorts (they are sorted again in another one, every label
once), every allocation option as Slurm reports it, and a launcher killed
with ``kill -9`` (its allocations end within the idle time).  Sorts are real
``Simple`` sorts of 3 s recordings.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey

from sf_assets.cli import main as cli_main
from sf_assets.core.errors import EnvironmentSortFailure, SfAssetsError
from sf_assets.core.folder_names import pair_folder
from sf_assets.core.manifest import parse_manifest
from sf_assets.definitions import defs
from sf_assets.engines import jit_cache
from sf_assets.engines.engine import EngineSettings, run_sort
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.engines.job import CanaryReport, SortJob, SortReport
from sf_assets.engines.work_dirs import retry_dir
from sf_assets.engines.slurm import srun_environment
from sf_assets.engines.slurm_campaign import anticipate_sorts
from sf_assets.engines.slurm_config import SLURM_ENV, slurm_resource_config
from sf_assets.engines.slurm_pool import (
    JOB_NAME_PREFIX,
    POOL_FOLDER,
    Pool,
    acquire_slot,
    allocation_time_min,
    anticipate,
    parse_time_left,
    release_idle,
)
from sf_assets.engines.service_address import ServiceSettings
from sf_assets.engines.slurm_service import (
    SLOT_FILE,
    allocation_gpus,
    connect_to_allocation,
    published_address,
    service_folder,
)
from sf_assets.engines.sort_service import SortService
from sf_assets.orchestration.partitions import recording_key
from sf_assets.orchestration.resources import SortingEngineResource
from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.synthetic import generate_studyset
from harness.automation import deployment, submit_backfill, write_manifest
from sf_assets_tests.graph_harness import write_spec
from harness.slurm_cluster import OTHER_PARTITION
from sf_assets_tests.test_slurm import _sort_job, _wait_for

REPO = Path(__file__).resolve().parents[1]
SORTER = "Simple"
IDLE_S = 2.0


# ---------------------------------------------------------------- no cluster


def test_sbatch_command_carries_every_allocation_option(tmp_path):
    slurm = SlurmSettings(partition="gpu", jobs_per_allocation=4, gpus_per_node=2, idle_release_s=30)
    pool = Pool.for_settings(tmp_path, slurm, timeout_min=5, env={})
    command = pool.sbatch_command()
    wrap = command[command.index("--wrap") + 1]
    options = command[: command.index("--wrap")]
    for wanted in ("--nodes=1", "--ntasks=4", "--partition=gpu", "--exclusive", "--gpus-per-node=2", "--time=15"):
        assert wanted in options
    assert f"--job-name=sf-assets-allocation-{pool.key}" in options and "--no-requeue" in options
    assert wrap.endswith(f"-m sf_assets.engines.slurm_holder {pool.root} 30")
    shared = Pool.for_settings(tmp_path, SlurmSettings(accept_shared_nodes=True), timeout_min=0, env={})
    assert shared.key != pool.key
    assert not [c for c in shared.sbatch_command() if c.startswith(("--exclusive", "--partition", "--gpus", "--time"))]


def test_allocation_walltime_is_the_setting_else_the_timeout_plus_a_margin():
    assert allocation_time_min(SlurmSettings(allocation_time_min=90), timeout_min=5) == 90
    assert allocation_time_min(SlurmSettings(), timeout_min=2.5) == 13
    assert allocation_time_min(SlurmSettings(), timeout_min=0) is None


def test_squeue_time_left_in_seconds():
    assert parse_time_left("4:59") == 299 and parse_time_left("1:00:00") == 3600
    assert parse_time_left("2-01:00:00") == 2 * 86400 + 3600
    assert parse_time_left("UNLIMITED") is None and parse_time_left("NOT_SET") is None


def test_daemon_runs_take_their_slurm_settings_from_one_variable():
    assert slurm_resource_config({}) == {} and slurm_resource_config({SLURM_ENV: "off"}) == {}
    assert slurm_resource_config({SLURM_ENV: "on"}) == {"use_slurm": True}
    text = "partition=gpu, jobs_per_allocation=4,accept_shared_nodes=yes,gpus_per_node=1,idle_release_s=2.5"
    config = slurm_resource_config({SLURM_ENV: text})
    assert config == {
        "use_slurm": True,
        "slurm_partition": "gpu",
        "slurm_jobs_per_allocation": 4,
        "slurm_accept_shared_nodes": True,
        "slurm_gpus_per_node": 1,
        "slurm_idle_release_s": 2.5,
    }
    settings = SortingEngineResource(work_root="/w", **config).settings().slurm
    assert (settings.partition, settings.jobs_per_allocation, settings.idle_release_s) == ("gpu", 4, 2.5)
    for bad, expected in (
        ("nodes=2", r"'nodes=2' is not KEY=VALUE with KEY one of partition"),
        ("jobs_per_allocation=0", r"jobs_per_allocation='0', expected int >= 1"),
        ("accept_shared_nodes=maybe", r"expected one of 1, true"),
    ):
        with pytest.raises(SfAssetsError, match=rf"SF_ASSETS_SLURM=.*{expected}"):
            slurm_resource_config({SLURM_ENV: bad})


def test_an_allocations_gpus_are_shared_out_between_its_slots():
    """``--slurm-gpus-per-node``: Slurm's CUDA_VISIBLE_DEVICES for the allocation, split between the N slots.

    (The test node has no GPU: what Slurm sets is read from the holder's environment.)
    """
    assert allocation_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == ("0", "1", "2", "3")
    assert allocation_gpus({}) == ()
    service = SortService(ServiceSettings(slots=2), {"PATH": "/bin"}, gpus=("0", "1", "2", "3"))
    assert [service.env_for(slot)["CUDA_VISIBLE_DEVICES"] for slot in service.slots] == ["0,2", "1,3"]
    shared = SortService(ServiceSettings(slots=3), {}, gpus=("7",))
    assert {shared.env_for(slot)["CUDA_VISIBLE_DEVICES"] for slot in shared.slots} == {"7"}
    assert "CUDA_VISIBLE_DEVICES" not in SortService(ServiceSettings(slots=2), {}).env_for(service.slots[0])


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def studyset(tmp_path_factory):
    """Eight 3 s recordings: a store the sorts write into, their manifest entries, the manifest."""
    root = tmp_path_factory.mktemp("slurm-campaign")
    store = KacheryStore(root / "kachery")
    generated = generate_studyset(
        store,
        root / "studyset",
        seed=1,
        num_study_sets=1,
        studies_per_set=1,
        recordings_per_study=8,
        num_channels=(4,),
        duration_s=3.0,
    )
    recordings = parse_manifest(generated.manifest_path.read_bytes(), str(generated.manifest_path)).recordings()
    return store, recordings, generated.manifest_path


def _job(store: KacheryStore, recording, work_dir: Path) -> SortJob:
    return _sort_job(store, recording, work_dir, canary_first_n_s=None, sorter=SORTER)


def _sort_all(jobs: list[SortJob], settings: EngineSettings, during=None) -> dict[str, list]:
    """Run every job at once (one thread each, as run slots would); returns each label's events."""
    events: dict[str, list] = {job.label: [] for job in jobs}
    errors: list[BaseException] = []

    def sort(job):
        try:
            events[job.label].extend(run_sort(job, settings))
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=sort, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return events


def _final(events: list) -> SortReport:
    reports = [e for e in events if isinstance(e, SortReport)]
    assert len(reports) == 1 and len([e for e in events if isinstance(e, CanaryReport)]) <= 1
    assert not reports[0].errored, (reports[0].error_message, Path(reports[0].console_path).read_text()[-2000:])
    return reports[0]


def _completed_jobs(cluster, job_name: str | None) -> list[dict[str, str]]:
    """What ``sacct`` (from the job completion log) reports for jobs named ``job_name`` (None: every job)."""
    fields = ["JobID", "JobName", "Partition", "State", "AllocCPUS"]
    text = cluster.run("sacct", "--completion", "--parsable2", "--noheader", f"--format={','.join(fields)}")
    rows = [dict(zip(fields, line.split("|"))) for line in text.splitlines()]
    return [row for row in rows if job_name is None or row["JobName"] == job_name]


def _scontrol(cluster, job_id: str) -> dict[str, str]:
    text = cluster.run("scontrol", "--oneliner", "show", "job", job_id)
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def _placed(work_dir) -> dict:
    """Where the sort in ``work_dir`` ran: allocation, claim, service slot, worker, how it ended."""
    path = Path(work_dir) / SLOT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------- on the cluster


def test_eight_sorts_on_two_allocations_of_two_warm_slots(slurm_cluster, studyset, tmp_path):
    """M=2, N=2, 8 sorts: Slurm records exactly the 2 allocations; each slot keeps one warm worker.

    A sort is not a job step of its own any more (it goes to the sort service
    the allocation's batch script runs), so ``squeue --steps`` shows only the
    allocations' batch steps and ``sacct`` exactly the two allocations.
    """
    store, recordings, _ = studyset
    slurm = SlurmSettings(
        accept_shared_nodes=True, jobs_per_allocation=2, max_simultaneous_allocations=2, idle_release_s=IDLE_S
    )
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    pool = Pool.for_settings(tmp_path, slurm, settings.timeout_min, srun_environment(os.environ))
    jobs = [_job(store, recording, tmp_path / f"sort{i}") for i, recording in enumerate(recordings)]
    assert len(jobs) == 8
    seen_allocations: set[str] = set()
    seen_steps: set[str] = set()
    busiest: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            listed = slurm_cluster.run("squeue", "--noheader", "--format=%i", f"--name={pool.job_name}").split()
            seen_steps.update(slurm_cluster.run("squeue", "--steps", "--noheader", "--format=%i").split())
            seen_allocations.update(listed)
            busiest.append(len(listed))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        events = _sort_all(jobs, settings)
    finally:
        stop.set()
        watcher.join()

    for job in jobs:
        report = _final(events[job.label])
        assert report.num_units is not None and report.cpu_time_s > 0
    placed = [_placed(job.work_dir) for job in jobs]
    allocations = {p["job_id"] for p in placed}
    assert len(allocations) == 2 and allocations == seen_allocations
    assert max(busiest) == 2  # never a third allocation
    # Each sort knows its claim and its service slot: two of each per allocation.
    for p in placed:
        assert p["claim"] in {f"{p['job_id']}-{index}" for index in (0, 1)}
        assert p["slot"] in {f"{p['job_id']}-{index}" for index in (0, 1)}
        assert p["exit_code"] == 0 and p["node"].split(".")[0] == slurm_cluster.node_name
    # One worker per slot, kept warm: every later sort in a slot ran on the same process.  A slot's
    # worker compiled the sorter itself, or is a copy of another slot's warm worker: at most one
    # compile per slot, and at least one in each allocation.
    by_slot: dict[str, list[dict]] = {}
    for p in placed:
        by_slot.setdefault(p["slot"], []).append(p)
    assert all(len({p["worker_pid"] for p in runs}) == 1 for runs in by_slot.values()), by_slot
    compiles = [p for p in placed if not p["warm"]]
    copies = [p for p in placed if p["copy_of"]]
    assert {p["job_id"] for p in compiles} == set(allocations)
    assert len(compiles) + len(copies) == len(by_slot), by_slot
    assert all(p["warm"] for p in copies)
    # No step per sort: only the allocations' batch steps (and Slurm's extern step).
    assert {step.split(".", 1)[1] for step in seen_steps} <= {"batch", "extern"}, seen_steps
    # The holders end the allocations once idle; Slurm's own record then shows exactly two, and no other job.
    assert slurm_cluster.wait_until_no_jobs(timeout_s=IDLE_S + 15) == []
    completed = _completed_jobs(slurm_cluster, pool.job_name)
    assert sorted(row["JobID"] for row in completed) == sorted(allocations)
    assert {row["State"] for row in completed} == {"COMPLETED"}
    # (Jobs of earlier tests on the same cluster, e.g. a step per sort in a held allocation, are older.)
    first = min(int(job_id) for job_id in allocations)
    assert not [
        row
        for row in _completed_jobs(slurm_cluster, None)
        if row["JobName"].startswith("sf-assets/") and int(row["JobID"].split(".")[0].split("_")[0]) >= first
    ]


def test_two_sorts_of_one_sorter_in_one_slot_reuse_one_worker(slurm_cluster, studyset, tmp_path):
    """One allocation of one slot: the second sort runs on the worker the first one compiled in."""
    store, recordings, _ = studyset
    slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, idle_release_s=IDLE_S)
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    first, second = (_job(store, recording, tmp_path / f"sort{i}") for i, recording in enumerate(recordings[:2]))
    slots = []
    for job in (first, second):
        events = list(run_sort(job, settings))
        _final(events)
        slots.append(next(e for e in events if isinstance(e, dict)))
    one, two = _placed(first.work_dir), _placed(second.work_dir)
    assert one["job_id"] == two["job_id"] and one["slot"] == two["slot"]
    assert one["worker_pid"] == two["worker_pid"] == slots[1]["worker_pid"]
    assert (slots[0]["warm"], slots[1]["warm"]) == (False, True)
    assert slurm_cluster.wait_until_no_jobs(timeout_s=IDLE_S + 15) == []


def test_a_sort_goes_to_the_allocation_whose_service_has_its_sorter_warm(slurm_cluster, studyset, tmp_path):
    """Two allocations each warm for one sorter: a later sort of either goes where its sorter is warm.

    The sort is of the sorter warm in the allocation with the higher job id, which
    placement without affinity (lowest job id first among equals) would pass over.
    """
    store, recordings, _ = studyset
    slurm = SlurmSettings(
        accept_shared_nodes=True, jobs_per_allocation=1, max_simultaneous_allocations=2, idle_release_s=30
    )
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    pool = Pool.for_settings(tmp_path, slurm, settings.timeout_min, srun_environment(os.environ))
    first = [
        _sort_job(store, recordings[0], tmp_path / "simple", canary_first_n_s=None, sorter="Simple"),
        _sort_job(store, recordings[1], tmp_path / "ms5", canary_first_n_s=None, sorter="MountainSort5"),
    ]
    try:
        for events in _sort_all(first, settings).values():
            _final(events)
        where = {job.sorter_name: _placed(job.work_dir)["job_id"] for job in first}
        assert len(set(where.values())) == 2
        sorter = max(where, key=lambda name: int(where[name]))
        later = _sort_job(store, recordings[2], tmp_path / "later", canary_first_n_s=None, sorter=sorter)
        _final(list(run_sort(later, settings)))
        assert _placed(later.work_dir)["job_id"] == where[sorter]
        assert _placed(later.work_dir)["warm"] is True
    finally:
        release_idle(pool)
    assert slurm_cluster.wait_until_no_jobs(timeout_s=15.0) == []


def test_a_cancelled_allocation_fails_only_its_sorts_which_run_again_elsewhere(slurm_cluster, studyset, tmp_path):
    store, recordings, _ = studyset
    # An idle time well above a loaded machine's scheduling hiccups: only the scancel may end an allocation.
    slurm = SlurmSettings(
        accept_shared_nodes=True, jobs_per_allocation=2, max_simultaneous_allocations=2, idle_release_s=10.0
    )
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    pool = Pool.for_settings(tmp_path, slurm, settings.timeout_min, srun_environment(os.environ))
    jobs = [_job(store, recording, tmp_path / f"sort{i}") for i, recording in enumerate(recordings[:4])]
    cancelled: list[str] = []

    def cancel_one_allocation_mid_sort():
        placed = _wait_for(
            lambda: next((p for p in map(_placed, (j.work_dir for j in jobs)) if p.get("worker_pid")), None),
            60,
            "a sort to start in an allocation's slot",
        )
        slurm_cluster.run("scancel", placed["job_id"])
        cancelled.append(placed["job_id"])

    events = _sort_all(jobs, settings, during=cancel_one_allocation_mid_sort)

    reports = {job.label: _final(events[job.label]) for job in jobs}
    assert sorted(reports) == sorted(job.label for job in jobs)  # every label once, every one sorted
    retried = [label for label, report in reports.items() if report.details.get("slurm_allocations_lost")]
    assert 1 <= len(retried) <= 2, {label: reports[label].details["slurm_allocations_lost"] for label in retried}
    for job in jobs:
        report = reports[job.label]
        lost = report.details.get("slurm_allocations_lost", [])
        assert all(entry.startswith(cancelled[0]) for entry in lost)
        # The result is the retry's, from a folder of its own: what the lost try left (or may still
        # write) stays in the attempt's folder, which nothing reads any more.
        final_dir = Path(report.console_path).parent
        assert final_dir == (retry_dir(Path(job.work_dir), len(lost)) if lost else Path(job.work_dir))
        assert _placed(final_dir)["job_id"] != cancelled[0] and _placed(final_dir)["exit_code"] == 0
        if lost:
            assert _placed(job.work_dir)["job_id"] == cancelled[0], "the lost try's placement is where it left it"
    release_idle(pool)
    assert slurm_cluster.wait_until_no_jobs(timeout_s=15) == []


def test_each_allocation_option_shows_in_what_slurm_reports(slurm_cluster, tmp_path):
    env = srun_environment(os.environ)
    exclusive = SlurmSettings(
        partition=OTHER_PARTITION, jobs_per_allocation=3, allocation_time_min=7, idle_release_s=30
    )
    shared = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=2, idle_release_s=30)
    shown = {}
    for name, slurm, timeout_min in (("exclusive", exclusive, 0), ("shared", shared, 2)):
        pool = Pool.for_settings(tmp_path / name, slurm, timeout_min, env)
        slot = acquire_slot(pool, "flags/test")
        try:
            _wait_for(
                lambda root=pool.root, job_id=slot.job_id: published_address(root, job_id),
                60.0,
                "the allocation's sort service",
            )
            service = json.loads((service_folder(pool.root, slot.job_id) / "service.json").read_text())
            shown[name] = (_scontrol(slurm_cluster, slot.job_id), service["settings"])
        finally:
            slot.release()
            assert release_idle(pool) == [slot.job_id]
    (ex_job, ex_service), (sh_job, sh_service) = shown["exclusive"], shown["shared"]
    assert (ex_job["Partition"], sh_job["Partition"]) == (OTHER_PARTITION, slurm_cluster.partition)
    assert (ex_job["OverSubscribe"], sh_job["OverSubscribe"]) == ("NO", "OK")
    assert (ex_job["TimeLimit"], sh_job["TimeLimit"]) == ("00:07:00", "00:12:00")  # the setting; -T 2 + 10
    assert (ex_job["NumTasks"], sh_job["NumTasks"]) == ("3", "2")
    # An exclusive allocation has the whole node; its service N slots, each with a third of it as threads.
    assert int(ex_job["NumCPUs"]) == slurm_cluster.cpus and ex_service["threads_per_sort"] == slurm_cluster.cpus // 3
    assert int(sh_job["NumCPUs"]) == 2 and sh_service["threads_per_sort"] == 1
    assert (ex_service["slots"], sh_service["slots"]) == (3, 2)
    assert ex_job["JobName"] != sh_job["JobName"]
    # GPUs: this node has none, so Slurm refuses the request, which names them.
    gpus = Pool.for_settings(tmp_path / "gpus", SlurmSettings(gpus_per_node=1, idle_release_s=30), 0, env)
    with pytest.raises(EnvironmentSortFailure, match=r"sbatch .*--gpus-per-node=1.*refused by Slurm.*gres"):
        acquire_slot(gpus, "flags/gpu")
    assert slurm_cluster.wait_until_no_jobs(timeout_s=10.0) == []


def test_a_service_folder_open_to_others_is_refused_before_its_key_is_read(tmp_path):
    from sf_assets.engines.service_address import KEY_NAME, ServiceFolderError

    folder = service_folder(tmp_path, "4242")
    folder.mkdir(parents=True, mode=0o755)  # not made by the service (which makes it 0700): someone else's
    (folder / "service.json").write_text(json.dumps({"address": ["127.0.0.1", 9]}))
    (folder / KEY_NAME).write_bytes(b"their key")
    with pytest.raises(ServiceFolderError, match="mode 0700"):
        connect_to_allocation(tmp_path, "4242", still_there=lambda: True, timeout_s=5.0)


def test_a_service_this_host_cannot_reach_fails_the_sort_with_what_to_fix(slurm_cluster, tmp_path):
    """A published address that refuses connections while its allocation runs (a firewall): no endless wait."""
    env = srun_environment(os.environ)
    pool = Pool.for_settings(tmp_path, SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1), 0, env)
    slot = acquire_slot(pool, "unreachable/test")
    try:
        _wait_for(lambda: published_address(pool.root, slot.job_id), 60.0, "the allocation's sort service")
        info_path = service_folder(pool.root, slot.job_id) / "service.json"
        info = json.loads(info_path.read_text())
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            info["address"] = ["127.0.0.1", closed.getsockname()[1]]
        info_path.write_text(json.dumps(info))
        unreachable = r"could not connect to it for 1 s.*TCP connections to the nodes"
        with pytest.raises(EnvironmentSortFailure, match=unreachable):
            connect_to_allocation(pool.root, slot.job_id, lambda: slot.state() == "RUNNING", timeout_s=1.0)
    finally:
        slot.release()
        release_idle(pool)
    assert slurm_cluster.wait_until_no_jobs(timeout_s=15.0) == []


# A launch in miniature: the launcher wraps its campaign as launch_campaign does, and a run
# process it starts (as the launch's slots are) places one long sort.
KILLED_LAUNCHER = """
import subprocess, sys
from sf_assets.engines.engine import EngineSettings
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.engines.slurm_campaign import campaign_allocations

work_root, idle_s, run_process, job_file = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, idle_release_s=idle_s)
with campaign_allocations(EngineSettings(work_root=work_root, slurm=slurm)):
    subprocess.run([sys.executable, "-c", run_process, work_root, str(idle_s), job_file])
"""

RUN_PROCESS = """
import sys
from pathlib import Path
from sf_assets.engines.engine import EngineSettings
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.engines.job import SortJob
from sf_assets.engines.slurm_campaign import run_slurm_sort
from sf_assets.engines.supervisor import prepare_work_dir

work_root, idle_s, job_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
slurm = SlurmSettings(accept_shared_nodes=True, jobs_per_allocation=1, idle_release_s=idle_s)
job = SortJob.from_json(Path(job_file).read_text())
prepare_work_dir(job)
for event in run_slurm_sort(job, EngineSettings(work_root=work_root, slurm=slurm), worker=[]):
    print(event, flush=True)
"""


def test_a_planned_launch_requests_its_allocations_keeps_them_while_sorts_are_to_come_then_they_end(
    slurm_cluster, tmp_path
):
    """Before its first sort, a launch that planned three sorts requests two allocations of two slots (M=2).

    None while the pool has room, none beyond M, none without Slurm.  Renewed
    (as the launch does while sorts are still to come) they outlive the idle
    time with no sort in them; once the renewals stop, their holders end them
    one idle time later.
    """
    slurm = SlurmSettings(
        accept_shared_nodes=True, jobs_per_allocation=2, max_simultaneous_allocations=2, idle_release_s=IDLE_S
    )
    settings = EngineSettings(work_root=str(tmp_path), timeout_min=5.0, slurm=slurm)
    assert anticipate_sorts(settings, 0) == []
    assert anticipate_sorts(EngineSettings(work_root=str(tmp_path), timeout_min=5.0), 3) == []
    requested = anticipate_sorts(settings, 3)
    assert len(requested) == 2 and set(requested) <= set(slurm_cluster.job_ids())
    assert anticipate_sorts(settings, 3) == []  # room for three already
    assert anticipate_sorts(settings, 50) == []  # M reached
    renewed_until = time.monotonic() + 3 * IDLE_S
    while time.monotonic() < renewed_until:
        anticipate_sorts(settings, 3)
        time.sleep(IDLE_S / 4)
    assert set(requested) <= set(slurm_cluster.job_ids()), "the reserved allocations ended while renewed"
    # One sort to come needs one allocation: only one is reserved, and the other ends when idle.
    renewed_until = time.monotonic() + 3 * IDLE_S
    while time.monotonic() < renewed_until:
        anticipate_sorts(settings, 1)
        time.sleep(IDLE_S / 4)
    assert len(set(requested) & set(slurm_cluster.job_ids())) == 1, slurm_cluster.job_ids()
    stopped = time.monotonic()
    assert slurm_cluster.wait_until_no_jobs(timeout_s=IDLE_S + 15.0) == []
    print(f"allocations gone {time.monotonic() - stopped:.1f} s after the last renewal (idle time {IDLE_S:g} s)")
    (pool_dir,) = (tmp_path / POOL_FOLDER).iterdir()
    ended = _completed_jobs(slurm_cluster, JOB_NAME_PREFIX + pool_dir.name)
    assert sorted(row["JobID"] for row in ended) == sorted(requested)
    assert {row["State"] for row in ended} == {"COMPLETED"}  # ended by their holders, not cancelled


def test_an_allocation_without_walltime_left_for_the_sorts_to_come_is_neither_counted_nor_reserved(
    slurm_cluster, tmp_path
):
    """A planned launch whose sorts need more walltime than a live allocation has left requests another.

    As a sort would pass it over (``-T`` and a minute's margin must fit in the
    time left), the first allocation (3 min of walltime) is room for a sort of
    a minute, not for one of an hour.
    """
    slurm = SlurmSettings(
        accept_shared_nodes=True, jobs_per_allocation=2, max_simultaneous_allocations=2, idle_release_s=IDLE_S,
        allocation_time_min=3,
    )  # fmt: skip
    pool = Pool.for_settings(tmp_path, slurm, 60.0, srun_environment(os.environ))
    (first,) = anticipate(pool, 1)
    _wait_for(lambda: pool.allocations().get(first, ("",))[0] == "RUNNING", 60.0, "the allocation to run")
    assert anticipate(pool, 1, needed_s=60.0) == []  # a minute and the margin fit in what is left of three
    (second,) = anticipate(pool, 1, needed_s=3600.0)
    assert second != first
    release_idle(pool)
    assert slurm_cluster.wait_until_no_jobs(timeout_s=15.0) == []


def test_the_command_line_requests_its_campaigns_allocations_before_its_first_run(
    slurm_cluster, studyset, tmp_path, monkeypatch
):
    """``run-sortings --use-slurm``: the allocation its two sorts need is requested once they are planned.

    Said before the first recording's run ends (the sorts come after it), and
    both sorts are placed in it: no sort had to request one.  Its service's
    template warmed itself with the campaign's sorter (engines/warm_up.py), so
    neither sort compiled nor loaded ``Simple``'s numba code: its workers had it;
    and the sorting is the one this host's own worker stores.
    """
    store, recordings, manifest_path = studyset
    chosen = recordings[:2]
    manifest = write_manifest(manifest_path, tmp_path / "studysets.json", [(r.study_name, r.name) for r in chosen])
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": [chosen[0].study_set_name]}})
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    for name, value in {
        "SF_ASSETS_HOME": str(tmp_path / "home"),
        "SF_ASSETS_KACHERY_DIR": str(store.root_dir),
        "DAGSTER_HOME": str(dagster_home),
        "SF_ASSETS_DAGSTER_DIR": str(tmp_path / "home" / "dagster"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("SF_ASSETS_STUDYSETS", "SF_ASSETS_SPEC", SLURM_ENV):
        monkeypatch.delenv(name, raising=False)
    # The session's JIT cache may hold Simple already (an earlier test's sort marked it), and a
    # template does not warm a sorter the cache holds: its mark goes, so this warm-up runs.
    if os.environ.get("NUMBA_CACHE_DIR"):
        for mark in Path(os.environ["NUMBA_CACHE_DIR"]).glob(f"{jit_cache.SORTER_MARKS}/simple-*.json"):
            mark.unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main([
            "run-sortings", "-s", str(manifest), "-l", str(spec), "-o", str(tmp_path / "records.json"), "-w", "2",
            "--no-job-cache", "--use-slurm", "--slurm-accept-shared-nodes", "--slurm-jobs-per-allocation", "2",
            "--slurm-max-simultaneous-allocations", "2", "--slurm-idle-release-s", "30",
        ])  # fmt: skip
    lines = out.getvalue().splitlines()
    assert code == 0, "\n".join(lines[-30:])
    said = [i for i, line in enumerate(lines) if line.startswith("Slurm: requested 1 allocation(s) for 2 sort(s)")]
    first_recording = next(i for i, line in enumerate(lines) if line.startswith("[recordings "))
    assert said and said[0] < first_recording, "\n".join(lines)
    (requested,) = lines[said[0]].rsplit(": ", 1)[1].split(", ")
    for recording in chosen:
        (attempt,) = pair_folder(tmp_path / "home" / "sorts", SORTER, recording.study_name, recording.name).glob("*-a*")
        assert _placed(attempt)["job_id"] == requested
        jit = json.loads((attempt / "result.json").read_text())["jit_cache"]
        assert jit["compiled"] == 0 and jit["loaded"] == 0, jit
    (report,) = (tmp_path / "home" / "sorts" / POOL_FOLDER).glob(f"*/services/{requested}/warm-up.json")
    (entry,) = json.loads(report.read_text())["sorters"]
    assert entry["sorter_name"] == SORTER and entry["error"] is None and entry["compiled"] + entry["loaded"] > 0, entry
    # The warm-up changed no result: the same sort on this host's own worker stores the same sorting.
    (attempt,) = pair_folder(tmp_path / "home" / "sorts", SORTER, chosen[0].study_name, chosen[0].name).glob("*-a*")
    on_slurm = json.loads((attempt / "result.json").read_text())["sorting_object_uri"]
    here = _final(list(run_sort(_job(store, chosen[0], tmp_path / "here"), EngineSettings(work_root=str(tmp_path / "w")))))
    assert here.sorting_object_uri.split("/")[2] == on_slurm.split("/")[2]
    assert slurm_cluster.wait_until_no_jobs(timeout_s=15.0) == []  # the launch ended it on exit
    (pool_dir,) = (tmp_path / "home" / "sorts" / POOL_FOLDER).iterdir()
    assert [row["JobID"] for row in _completed_jobs(slurm_cluster, JOB_NAME_PREFIX + pool_dir.name)] == [requested]


def test_allocations_end_within_the_idle_time_after_kill_9_of_the_launcher(slurm_cluster, tmp_path):
    """The launcher dies mid-sort: its allocation (service, warm worker, sort) ends within the idle time.

    The sort is a MountainSort5 sort of a 60 s recording, far longer than the
    idle time, so the allocation ends under it.
    """
    idle_s = 4.0
    store = KacheryStore(tmp_path / "kachery")
    generated = generate_studyset(
        store, tmp_path / "long", seed=2, num_study_sets=1, studies_per_set=1, recordings_per_study=1,
        num_channels=(4,), duration_s=60.0,
    )  # fmt: skip
    (recording,) = parse_manifest(generated.manifest_path.read_bytes(), str(generated.manifest_path)).recordings()
    job = _sort_job(store, recording, tmp_path / "sort", canary_first_n_s=None, sorter="MountainSort5")
    (tmp_path / "job.json").write_text(job.to_json())
    launcher = subprocess.Popen(
        [sys.executable, "-c", KILLED_LAUNCHER, str(tmp_path), str(idle_s), RUN_PROCESS, str(tmp_path / "job.json")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        placed = _wait_for(lambda: _placed(job.work_dir).get("worker_pid"), 90.0, "the sort to start") and _placed(
            job.work_dir
        )
        assert placed["job_id"] in slurm_cluster.job_ids()
        launcher.kill()  # kill -9 of the launcher alone: its run process goes on, connected to the service
        launcher.wait()
        killed_at = time.monotonic()
        left = slurm_cluster.wait_until_no_jobs(timeout_s=idle_s + 15.0)
        gone_after_s = time.monotonic() - killed_at
        # The run process left behind sees its sort end with the allocation and asks for no other.
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.append(launcher.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout=20.0)
        report = "".join(output)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # its run process, the last of its group, has already ended
    assert left == []
    # Idle time, plus the heartbeat interval and Slurm's own teardown of the job.
    assert gone_after_s < idle_s + 6.0, gone_after_s
    assert "errored=True" in report and "allocation_lost" in report, report
    assert not Path(f"/proc/{placed['worker_pid']}").exists()  # the warm worker went with its allocation
    pool_name = JOB_NAME_PREFIX + next((tmp_path / POOL_FOLDER).iterdir()).name
    assert [row["JobID"] for row in _completed_jobs(slurm_cluster, pool_name)] == [placed["job_id"]]
    print(f"allocation gone {gone_after_s:.1f} s after kill -9 (idle time {idle_s:g} s)")


def test_a_daemon_launched_backfill_sorts_on_the_allocations(slurm_cluster, studyset, tmp_path, monkeypatch):
    """``SF_ASSETS_SLURM``: a backfill the daemon runs sorts in a pool allocation.

    No launcher wraps these runs: the allocation ends by itself, once idle.
    """
    store, recordings, manifest_path = studyset
    recording = recordings[0]
    manifest = write_manifest(manifest_path, tmp_path / "studysets.json", [(recording.study_name, recording.name)])
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": [recording.study_set_name]}})
    for name, value in {
        "SF_ASSETS_HOME": str(tmp_path / "home"),
        "SF_ASSETS_KACHERY_DIR": str(store.root_dir),
        "SF_ASSETS_SPEC": str(spec),
        "SF_ASSETS_STUDYSETS": str(manifest),
        SLURM_ENV: f"accept_shared_nodes=1,jobs_per_allocation=2,idle_release_s={IDLE_S:g}",
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(
        temp_dir=str(tmp_path / "dagster"), synchronous_run_launcher=True, synchronous_run_coordinator=True
    ) as instance:
        key = f"{recording_key(recording)}|{SORTER}"
        with deployment(tmp_path, instance) as location:
            location.tick_sensors()  # registers the partitions, runs the recording
            # The tick planned the pair's sort and requested (and reserved) the allocation it needs.
            assert list((tmp_path / "home" / "sorts" / POOL_FOLDER).glob("*/reserved/*"))
            # A backfill of the pair's sorting, as the UI's dialog submits it (the sensor would
            # request the sort at its next tick; it is not ticked again).
            subset = AssetGraphSubset.from_asset_partition_set(
                {AssetKeyPartitionKey(dg.AssetKey("sorting"), key)}, defs.get_repository_def().asset_graph
            )
            submit_backfill(instance, subset)
            (backfill,) = location.run_backfills()
        assert instance.get_materialized_partitions(dg.AssetKey("sorting")) == {key}
        assert len(instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))) == 1
    (attempt,) = pair_folder(tmp_path / "home" / "sorts", SORTER, recording.study_name, recording.name).glob("*-a*")
    placed = _placed(attempt)
    assert placed["exit_code"] == 0 and placed["worker_pid"]
    (pool_dir,) = (tmp_path / "home" / "sorts" / POOL_FOLDER).iterdir()
    assert slurm_cluster.wait_until_no_jobs(timeout_s=IDLE_S + 15) == []
    # The sensor's tick requested one for the pair it planned; it ends idle if the recording's run
    # outlasts the idle time, and the sort then requests another.
    allocations = _completed_jobs(slurm_cluster, JOB_NAME_PREFIX + pool_dir.name)
    assert 1 <= len(allocations) <= 2 and placed["job_id"] in {row["JobID"] for row in allocations}
    assert {row["State"] for row in allocations} == {"COMPLETED"}  # ended by their holders


def test_a_connection_the_service_never_answers_times_out_and_a_real_one_has_no_timeout_left():
    # A full listen queue drops a connection on the service's side only; the client saw it
    # established and, with multiprocessing's Client, waited for the challenge forever (a
    # 64-sort benchmark hung on its last sort that way).
    from multiprocessing.connection import Listener

    from sf_assets.engines.slurm_service import authenticated_client

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never authenticates
        started = time.monotonic()
        with pytest.raises(OSError):
            authenticated_client(silent.getsockname(), b"k" * 32, timeout_s=0.5)
        assert time.monotonic() - started < 5.0

    with Listener(("127.0.0.1", 0), family="AF_INET", authkey=b"k" * 32) as listener:
        server: list = []
        accepting = threading.Thread(target=lambda: server.append(listener.accept()))
        accepting.start()
        conn = authenticated_client(listener.address, b"k" * 32, timeout_s=0.5)
        accepting.join(10)
        late = threading.Timer(1.5, lambda: server[0].send("after the handshake's timeout"))
        late.start()
        try:
            assert conn.recv() == "after the handshake's timeout", "a blocking receive outlasts the 0.5 s"
        finally:
            late.join()
            conn.close()
            server[0].close()
