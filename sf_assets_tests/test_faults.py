"""Faults from outside the sorters: a run process killed mid-sort, corrupted recordings.

Each case runs the real graph (real MountainSort5 sorts of 10 s synthetic
recordings) on a temporary Dagster instance, breaks something the way a
machine or a disk breaks it, and checks that the damage stays where it
happened: a killed launch leaves no sorting behind and the next launch sorts
exactly what was unfinished; a damaged recording fails its own partition only,
with a message naming the URI at fault.  A sort past its timeout is covered in
test_sorting_failures.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value
import spikeinterface.core as sc

from sf_assets.orchestration.assets.history import plain_metadata
from sf_assets.core.launcher_identity import LauncherIdentity
from sf_assets.core.labels import ground_truth_label, recording_label, sorting_label
from sf_assets.stores.data import RAW_LABEL, load_sorting_object, store_ground_truth, store_recording
from sf_assets.engines.job import WORKER_FILE
from sf_assets.orchestration.partitions import pair_key, recording_key, sorting_partitions
from sf_assets.engines.engine import EngineSettings
from sf_assets.engines.service_client import call_service, service_status
from sf_assets.stores.workspace import WorkspaceStore
from harness.automation import write_manifest
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"
SORTING = dg.AssetKey("sorting")
WAIT_LIMIT_S = 150.0
"""How long the launch to be killed may take to reach its second sort (two busy cores)."""

LAUNCH_SCRIPT = """\
import json, sys
import dagster as dg
from dagster._serdes import deserialize_value
from sf_assets.core.campaign import Campaign
from sf_assets.stores.inputs import load_config
from sf_assets.cli.launch import RunOptions, launch_campaign
from sf_assets.stores.kachery import KacheryStore

options = RunOptions(**json.loads(sys.argv[2]))
instance = dg.DagsterInstance.from_ref(deserialize_value(sys.argv[1]))
campaign = Campaign(*load_config(options.manifest_source, options.spec_source, KacheryStore(options.kachery_dir)))
launch_campaign(instance, campaign, options, workers=1, progress=print)
"""
"""What ``sf-assets run-sortings`` does, with one worker: every run executes in this one
process and the sorts run one after another, so the kill lands at a known point."""


@pytest.fixture
def dagster_home(tmp_path):
    """A temporary instance that another process can open too (its dagster.yaml is on disk)."""
    home = tmp_path / "dagster"
    home.mkdir()
    with project_instance(temp_dir=str(home)) as instance:
        yield home, instance


def _workspace_labels(env) -> list[str]:
    md = env.latest_unpartitioned("workspace_sync")
    return [e.label for e in WorkspaceStore(env.options.workspace_db_url).list_entries(md["workspace_uri"])]


def _labels_of(pairs) -> set[str]:
    labels = set()
    for sorter_spec, rec in pairs:
        labels |= {
            recording_label(rec.study_name, rec.name),
            ground_truth_label(rec.study_name, rec.name),
            sorting_label(sorter_spec.name, rec.study_name, rec.name),
        }
    return labels


# ------------------------------------------------------------ a killed run


def _sorting_events(instance) -> list:
    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SORTING), limit=1000)
    return [r.event_log_entry for r in result.records]


def _worker_pids(work_dir: Path) -> list[int]:
    """Sort workers busy with ``work_dir``: a fresh worker names it on its command
    line; a warm one (``--serve``) left its pid in the job's worker file."""
    warm = json.loads((work_dir / WORKER_FILE).read_text())["pid"] if (work_dir / WORKER_FILE).exists() else None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sf_assets.engines.worker" in argv and (str(work_dir).encode() in argv or int(entry.name) == warm):
            pids.append(int(entry.name))
    return pids


def _wait_for(what: str, condition, launcher: subprocess.Popen, log: Path):
    deadline = time.monotonic() + WAIT_LIMIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        if launcher.poll() is not None:
            pytest.fail(f"the launch exited (code {launcher.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"gave up after {WAIT_LIMIT_S:g} s waiting for {what}:\n{log.read_text()[-4000:]}")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _in_progress(instance) -> set[str]:
    """Sorting partitions the UI shows as in progress (Dagster's partition status cache)."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    cached = get_and_update_asset_status_cache_value(instance, SORTING, sorting_partitions, instance)
    subset = cached.deserialize_in_progress_partition_subsets(sorting_partitions)
    return {str(k) for k in subset.get_partition_keys()}


def _describe(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    state = next((line for line in status if line.startswith("State:")), "")
    return f"{state} {cmdline[:120]}"


def _unfinished_runs(instance) -> dict[str, int]:
    """This instance's unfinished runs, and the run process executing each (its run launcher tags it)."""
    from sf_assets.orchestration.run_launcher import RUN_WORKER_TAG

    alive = {}
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])):
        identity = LauncherIdentity.parse(run.tags.get(RUN_WORKER_TAG, ""))
        if identity is not None and not identity.is_gone():
            alive[run.run_id] = identity.pid
    return alive


@pytest.fixture
def killed_launch(synthetic_studyset, tmp_path, dagster_home):
    """A command-line launch of three MountainSort5 sorts, SIGKILLed during the second one.

    Only the launching process is killed, as the OOM killer does.  Its runs
    execute in the host's sort service, not in it; they carry its lease, so
    the service must end them, and the second sort with them, within seconds.
    """
    home, instance = dagster_home
    keep = [("synth_a1_K6_C4", "001_synth"), ("synth_a1_K6_C4", "002_synth"), ("synth_b1_K6_C4", "001_synth")]
    manifest = write_manifest(synthetic_studyset.manifest_path, tmp_path / "studysets.json", keep)
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]}})
    # A canary first: the kill, sent as soon as the second sort has a slot, lands seconds
    # before that sort could finish, even on a busy machine.
    env = make_env(tmp_path / "env", synthetic_studyset.store, instance, manifest, spec, canary_first_n_s=3.0)
    assert len(env.campaign.jobs) == 3
    _, second = env.campaign.jobs[1]
    second_key = str(pair_key(SORTER, second))

    def second_sort_started() -> bool:
        events = instance.get_records_for_run(
            [r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": second_key}))][0]
            if instance.get_runs(dg.RunsFilter(tags={"dagster/partition": second_key}))
            else "none"
        ).records
        return any("sort service slot" in (e.event_log_entry.user_message or "") for e in events)

    log = tmp_path / "launch.log"
    options = dataclasses.asdict(env.with_options(log_level="WARNING").options)
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_SCRIPT, serialize_value(instance.get_ref()), json.dumps(options)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for("the first sorting to land", lambda: _sorting_events(instance), launcher, log)
        _wait_for("the second sort to start on the sort service", second_sort_started, launcher, log)
        [second_run] = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": second_key}))
        slot_line = next(
            r.event_log_entry.user_message
            for r in instance.get_records_for_run(second_run.run_id).records
            if "sort service slot" in (r.event_log_entry.user_message or "")
        )
        worker_pid = int(slot_line.split("worker pid ")[1].split()[0])
        run_pids = _unfinished_runs(instance)
        assert second_run.run_id in run_pids, "the second run executes in a run process of the host's service"
    finally:
        if launcher.poll() is None:
            os.kill(launcher.pid, signal.SIGKILL)  # the launching process only, as the OOM killer does
        launcher.wait(timeout=30)
    assert launcher.returncode == -signal.SIGKILL
    killed_at = time.monotonic()
    service = EngineSettings(work_root="").service()  # the session's service (SF_ASSETS_SERVICE_DIR)

    def sorting_for_the_launch() -> bool:
        # A sort still running: its worker is busy.  A worker whose sort had already ended when
        # the launch died waits, warm, for the next sort: the host's, no longer the launch's.
        status = service_status(service) or {"slots": []}
        return any(slot["busy"] and slot["worker_pid"] == worker_pid for slot in status["slots"])

    def still_running() -> list[str]:
        # The runs' process may live on (other runs share it); the runs themselves must end.
        return [
            run_id for run_id in run_pids
            if call_service(service, "run_status", start=False, run_id=run_id)["alive"]
        ]

    while time.monotonic() - killed_at < 10 and (sorting_for_the_launch() or still_running()):
        time.sleep(0.1)
    leftover = {run_id: f"run still executing in {_describe(run_pids[run_id])}" for run_id in still_running()}
    if sorting_for_the_launch():
        leftover[worker_pid] = "still sorting: " + _describe(worker_pid)
        _kill_group(worker_pid)  # do not leave a sorter running if the assertion fails
    assert not leftover, f"a run or sort of the killed launch outlived it by more than 10 s: {leftover}"
    return env, second_run.run_id


def test_a_run_killed_mid_sort_is_sorted_again_and_nothing_else_is(killed_launch):
    env, killed_run_id = killed_launch
    first, second, third = (str(pair_key(s.name, r)) for s, r in env.campaign.jobs)
    landed = [e.dagster_event.partition for e in _sorting_events(env.instance)]
    # The kill came while the second sort ran; a fast sort may still have ended first.
    assert first in landed and third not in landed
    finished = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    deadline = time.monotonic() + 30
    while env.instance.get_run_by_id(killed_run_id).status not in finished and time.monotonic() < deadline:
        time.sleep(0.2)
    # No run of the dead launch stays started (the UI shows no partition in progress): the
    # third pair's run (submitted ahead, waiting for the launch's one sort at a time) ended too.
    statuses = {r.tags["dagster/partition"]: r.status for r in env.instance.get_runs(dg.RunsFilter(job_name="sorting_job"))}
    deadline = time.monotonic() + 30
    while any(status not in finished for status in statuses.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        statuses = {r.tags["dagster/partition"]: r.status for r in env.instance.get_runs(dg.RunsFilter(job_name="sorting_job"))}
    assert statuses[first] in finished and statuses[second] in finished
    assert all(status in finished for status in statuses.values()), statuses
    assert _in_progress(env.instance) == set()

    outcome = env.launch(workers=1)
    assert outcome.cached_pairs == sorted(landed)
    # A sorting whose comparison the kill stopped is compared again, not sorted again.
    compared = env.latest("sorting_comparison")
    assert first in compared and all(o.success for o in outcome.comparisons)
    # Only the third pair's recording may still have been unfetched when the launch died.
    assert {o.partition_key for o in outcome.recordings} <= {recording_key(env.campaign.jobs[2][1])}
    assert outcome.skipped_pairs == []
    # (they run side by side on the sort service's slots: either may finish first)
    unfinished = [key for key in (second, third) if key not in landed]
    assert sorted((o.partition_key, o.success, o.error) for o in outcome.sortings) == sorted(
        (key, True, None) for key in unfinished
    )
    assert _in_progress(env.instance) == set()

    # Every sorting ever registered names a loadable sorting object: nothing half-written,
    # and nothing from the killed run.
    events = _sorting_events(env.instance)
    assert sorted(e.dagster_event.partition for e in events) == sorted([first, second, third])
    for event in events:
        md = plain_metadata(event)
        sorting = load_sorting_object(md["sorting_object_uri"], env.store, 30000.0)
        assert sorting.get_num_units() == md["num_units"] > 0

    # Each label once in the workspace, and a second sync adds nothing.
    expected = _labels_of(env.campaign.jobs)
    labels = _workspace_labels(env)
    assert len(labels) == len(set(labels)) == len(expected) == 9
    assert set(labels) == expected
    again = env.run("results_job")
    assert again.success, again.error
    assert env.latest_unpartitioned("workspace_sync")["added"] == 0
    assert sorted(_workspace_labels(env)) == sorted(labels)


# ------------------------------------------------- two launches at once


def test_two_launches_of_one_campaign_at_once_sort_each_pair_once(synthetic_studyset, tmp_path, dagster_home):
    """Two command lines launch the same campaign against one instance and one workspace at the
    same time: the run queue lets one run per pair go at a time, and the later run finds the
    pair in the job cache, so every pair is sorted once and every label lands once."""
    home, instance = dagster_home
    keep = [("synth_a1_K6_C4", "001_synth"), ("synth_a1_K6_C4", "002_synth")]
    manifest = write_manifest(synthetic_studyset.manifest_path, tmp_path / "studysets.json", keep)
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    env = make_env(tmp_path / "env", synthetic_studyset.store, instance, manifest, spec, canary_first_n_s=0.0)
    options = json.dumps(dataclasses.asdict(env.with_options(log_level="WARNING").options))
    logs = [tmp_path / f"launch-{i}.log" for i in (1, 2)]
    launches = []
    for log in logs:
        with open(log, "w") as out:
            launches.append(
                subprocess.Popen(
                    [sys.executable, "-c", LAUNCH_SCRIPT, serialize_value(instance.get_ref()), options],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [launch.wait(timeout=600) for launch in launches]
    finally:
        for launch in launches:
            if launch.poll() is None:
                launch.kill()
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    pairs = [str(pair_key(s.name, r)) for s, r in env.campaign.jobs]
    sorted_partitions = [e.dagster_event.partition for e in _sorting_events(instance)]
    assert sorted(sorted_partitions) == sorted(pairs), "each pair sorted exactly once"
    runs = instance.get_runs(dg.RunsFilter(job_name="sorting_job"))
    assert len(runs) == 4 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}  # two runs per pair
    consoles = [plain_metadata(e)["console_out_uri"] for e in _sorting_events(instance)]
    assert len(set(consoles)) == len(consoles)
    labels = _workspace_labels(env)
    assert len(labels) == len(set(labels)) == len(_labels_of(env.campaign.jobs))


# ----------------------------------------------------- corrupted recordings


def _manifest_entry(name: str, rec_uri: str, gt_uri: str) -> dict:
    return {
        "name": name,
        "studyName": "faulty",
        "studySetName": "FAULTY_SET",
        "sampleRateHz": 30000.0,
        "numChannels": 4,
        "durationSec": 10.0,
        "numTrueUnits": 6,
        "spikeSign": -1,
        "recordingUri": rec_uri,
        "sortingTrueUri": gt_uri,
    }


def _generated(seed: int):
    return sc.generate_ground_truth_recording(
        durations=[10.0], sampling_frequency=30000.0, num_channels=4, num_units=6, seed=seed
    )


@pytest.fixture
def faulty_manifest(kachery_store, tmp_path):
    """One healthy recording, one whose raw MDA is truncated, one whose stored raw file is corrupt.

    Returns (manifest path, {recording name: the raw URI at fault}).
    """
    store = kachery_store
    healthy, healthy_gt = _generated(seed=11)
    healthy_uri = store_recording(healthy, store, "001_healthy")
    healthy_gt_uri = store_ground_truth(healthy_gt, store, "001_healthy")

    # Truncated: a recording object whose raw MDA lost its last samples (a cut-off
    # download stored as it was).  Its sha1 matches; its header does not.
    good_obj = store.load_json(healthy_uri)
    short_raw_uri = store.store_bytes(store.load_bytes(good_obj["raw"])[:-4000], RAW_LABEL)
    truncated_uri = store.store_json({**good_obj, "raw": short_raw_uri}, "002_truncated.json")

    # Corrupt: stored intact, then bytes flipped on disk.  The sha1 no longer matches.
    corrupt, corrupt_gt = _generated(seed=12)
    corrupt_uri = store_recording(corrupt, store, "003_corrupt")
    corrupt_gt_uri = store_ground_truth(corrupt_gt, store, "003_corrupt")
    corrupt_raw_uri = store.load_json(corrupt_uri)["raw"]
    stored = store.load_file(corrupt_raw_uri)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    stored.chmod(0o644)
    stored.write_bytes(bytes(data))

    manifest = {
        "StudySets": [
            {
                "name": "FAULTY_SET",
                "info": {},
                "description": "one healthy recording and two damaged ones",
                "studies": [
                    {
                        "name": "faulty",
                        "studySetName": "FAULTY_SET",
                        "recordings": [
                            _manifest_entry("001_healthy", healthy_uri, healthy_gt_uri),
                            _manifest_entry("002_truncated", truncated_uri, healthy_gt_uri),
                            _manifest_entry("003_corrupt", corrupt_uri, corrupt_gt_uri),
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "studysets.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path, {"002_truncated": short_raw_uri, "003_corrupt": corrupt_raw_uri}


def test_a_damaged_recording_fails_only_its_own_partition(kachery_store, tmp_path, faulty_manifest, dagster_home):
    manifest, bad_raw_uris = faulty_manifest
    _, instance = dagster_home
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": ["FAULTY_SET"]}})
    env = make_env(tmp_path / "env", kachery_store, instance, manifest, spec, canary_first_n_s=0.0)
    pairs = {r.name: (s, r) for s, r in env.campaign.jobs}
    key_of = {name: str(pair_key(s.name, r)) for name, (s, r) in pairs.items()}
    rec_key_of = {name: recording_key(r) for name, (_, r) in pairs.items()}

    outcome = env.launch(workers=1)

    by_recording = {o.partition_key: o for o in outcome.recordings}
    assert by_recording[rec_key_of["001_healthy"]].success
    truncated = by_recording[rec_key_of["002_truncated"]]
    assert not truncated.success
    assert bad_raw_uris["002_truncated"] in truncated.error and "truncated" in truncated.error
    corrupt = by_recording[rec_key_of["003_corrupt"]]
    assert not corrupt.success
    assert bad_raw_uris["003_corrupt"] in corrupt.error and "corrupt" in corrupt.error

    assert sorted(outcome.skipped_pairs) == sorted([key_of["002_truncated"], key_of["003_corrupt"]])
    assert [(o.partition_key, o.success, o.error) for o in outcome.sortings] == [(key_of["001_healthy"], True, None)]
    assert set(env.latest("recording")) == set(env.latest("ground_truth")) == {rec_key_of["001_healthy"]}
    assert set(env.latest("sorting")) == set(env.latest("sorting_comparison")) == {key_of["001_healthy"]}
    for name in ("002_truncated", "003_corrupt"):
        assert not env.instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key_of[name]}))

    records = json.loads((env.root / "outputs" / "sorting_records.json").read_text())
    assert [(r["recordingName"], r["errored"]) for r in records] == [("001_healthy", False)]
    assert sorted(_workspace_labels(env)) == sorted(_labels_of([pairs["001_healthy"]]))
