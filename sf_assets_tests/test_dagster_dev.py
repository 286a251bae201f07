"""The UI's path, for real: ``dagster dev`` running, backfills and terminations sent over GraphQL.

One deployment for the module (a real webserver, daemons and code server on a
temporary instance with the project's run queue and run launcher).  A
backfill of MountainSort5 on the four synthetic recordings (the recordings
and ground truths, the sortings and comparisons) is launched with
``launchPartitionBackfill``, as the UI's backfill dialog sends it; the
queue's daemon hands its runs to the sort service.  Four sorts on the
service's two slots: each slot compiles mountainsort5 once, the later sorts
run warm.  Then a SpykingCircus2 sort (about 20 s compiling in a worker new
to it) is started from the UI and terminated from the UI mid-sort.
"""
from __future__ import annotations

import json
import os
import time

import dagster as dg
import pytest

from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from harness.dagster_dev import campaign_backfill, summary_covering
from sf_assets.engines.service_client import service_status
from sf_assets.orchestration.partitions import pair_key
from sf_assets.orchestration.sensors import FAN_IN_RUN_TAGS, TICK_PERIOD_S
from sf_assets_tests.deployment_harness import Deployment, dev_deployment

SORTER = "MountainSort5"
STOPPED_SORTER = "SpykingCircus2"
TICK_S = TICK_PERIOD_S
TICK_EVALUATION_S = 8.0
# A pass of the backfill daemon over the campaign's backfill, and its runs' creation, on two shared cores.
PASS_EVALUATION_S = 5.0
# From the automation tick's request to the summary's materialization: the tick's own
# evaluation, the queue's dequeue (1 s) and the summary run, on two shared cores.
SUMMARY_RUN_ALLOWANCE_S = 20.0


@pytest.fixture(scope="module")
def deployment(synthetic_studyset, tmp_path_factory):
    root = tmp_path_factory.mktemp("dagster-dev")
    sorters = {
        SORTER: {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]},
        STOPPED_SORTER: {"studysets": ["SYNTH_SET_A"]},
    }
    with dev_deployment(root, synthetic_studyset.store, synthetic_studyset.manifest_path, sorters) as deployment:
        yield deployment


class Backfill(dict):
    """What the MountainSort5 backfill left: ``id``, ``pairs``, ``summary`` (its covering event),
    ``last_landed`` / ``last_sorting``: when its last result / last sorting was materialized (epoch s),
    and ``runs``: its run records."""


@pytest.fixture(scope="module")
def backfill(deployment: Deployment) -> Backfill:
    # The whole campaign in one backfill, as a user selects it in the UI: its recordings and ground
    # truths, then (at the backfill daemon's next pass after they land) its sortings and comparisons.
    request = campaign_backfill(deployment.campaign, {SORTER})
    backfill_id = deployment.dev.launch_partition_backfill(request, title="test: MountainSort5 from the UI")
    pairs = request["sorting"]

    def finished():
        status = deployment.instance.get_backfill(backfill_id).status
        return status if status.value.startswith(("COMPLETED", "FAILED", "CANCELED")) else None

    status = deployment.dev.wait_for(finished, 240, f"backfill {backfill_id} finished")
    assert status.value == "COMPLETED_SUCCESS", _failures(deployment, backfill_id)
    landed = {
        asset: [
            entry.timestamp
            for _, entry in latest_partition_events(deployment.instance, dg.AssetKey(asset), partitions=pairs).values()
        ]
        for asset in ("sorting", "sorting_comparison")
    }
    assert [len(times) for times in landed.values()] == [len(pairs)] * 2
    last_landed = max(landed["sorting_comparison"] + landed["sorting"])
    summary = deployment.dev.wait_for(
        lambda: summary_covering(deployment.instance, len(pairs), after=last_landed),
        TICK_S + SUMMARY_RUN_ALLOWANCE_S + 60,
        f"a sorter_summary of all {len(pairs)} comparisons after the last one landed",
    )
    runs = deployment.instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    return Backfill(
        id=backfill_id, pairs=pairs, summary=summary, last_landed=last_landed, last_sorting=max(landed["sorting"]),
        runs=runs,
    )


def _run_assets(record) -> set[str]:
    return {key.to_user_string() for key in record.dagster_run.asset_selection or ()}


def test_the_backfill_launches_sortings_at_the_first_pass_after_their_recordings_land(deployment, backfill):
    """Dagster launches a backfill's sortings only at a pass of its backfill daemon after their recordings
    have landed; the project's run coordinator (dagster.yaml) makes those passes 10 s apart, not 30 s."""
    interval = deployment.instance.run_coordinator.backfill_pass_interval_seconds
    assert interval == 10
    recording_runs = [r for r in backfill["runs"] if _run_assets(r) == {"recording", "ground_truth"}]
    sorting_runs = [r for r in backfill["runs"] if "sorting" in _run_assets(r)]
    assert len(recording_runs) == len(sorting_runs) == len(backfill["pairs"]) == 4, [_run_assets(r) for r in backfill["runs"]]
    # A pass may launch a sorting as soon as its recording is stored (before ground_truth, in the same
    # run, is), or only once that run has ended: after the first, and within a pass of the second.
    recording_run_ids = {r.dagster_run.run_id for r in recording_runs}
    recordings = deployment.instance.fetch_materializations(dg.AssetKey("recording"), limit=100).records
    first_stored = min(record.timestamp for record in recordings if record.run_id in recording_run_ids)
    first_run_ended = min(r.end_time for r in recording_runs)
    first_sorting_launched = min(r.create_timestamp.timestamp() for r in sorting_runs)
    assert first_stored < first_sorting_launched <= first_run_ended + interval + PASS_EVALUATION_S


def _failures(deployment: Deployment, backfill_id: str) -> str:
    runs = deployment.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    return "; ".join(f"{r.run_id[:8]} {r.status.value} {r.tags.get('dagster/partition')}" for r in runs if not r.is_success)


def test_sorts_of_one_sorter_reuse_the_services_warm_workers(deployment, backfill):
    sortings = latest_partition_events(deployment.instance, dg.AssetKey("sorting"), partitions=backfill["pairs"])
    by_time = sorted((entry.timestamp, plain_metadata(entry)) for _, entry in sortings.values())
    workers = [(md["worker_pid"], md["warm_worker"], md.get("worker_copied_from")) for _, md in by_time]
    slots = deployment.service.slots
    # Every sort says what its sorter's numba code cost it (sf_assets/engines/jit_cache.py).
    assert all({"jit_functions_loaded", "jit_functions_compiled"} <= md.keys() for _, md in by_time), by_time
    cold = [pid for pid, warm, _ in workers if not warm]
    # Each worker compiles mountainsort5 once, or is a copy of one that did; every later sort
    # of it in that worker is warm.
    assert len(cold) == len(set(cold)) <= slots, workers
    assert len(cold) < len(workers)
    for i, (pid, warm, copy_of) in enumerate(workers):
        earlier = {p for p, _, _ in workers[:i]}
        assert warm == (pid in earlier or copy_of is not None), workers
        assert copy_of is None or copy_of in earlier, workers


def test_the_summary_covers_every_pair_within_one_automation_tick(deployment, backfill):
    summary = backfill["summary"]
    run = deployment.instance.get_run_record_by_id(summary.run_id)
    # The next automation tick after the last result requested this run: it starts at most TICK_S
    # later, and creates the run once it has evaluated (seconds on two shared cores).
    assert run.create_timestamp.timestamp() - backfill["last_landed"] <= TICK_S + TICK_EVALUATION_S
    assert summary.timestamp - backfill["last_landed"] <= TICK_S + SUMMARY_RUN_ALLOWANCE_S
    # Requested by the daemon's automation tick with the priority that puts it ahead of queued sorts.
    assert FAN_IN_RUN_TAGS.items() <= run.dagster_run.tags.items()
    md = plain_metadata(summary)
    assert md["num_comparisons"] == len(backfill["pairs"]) == 4
    rows = {(r.data["sorter"], r.data["study"], r.data["recordings"]) for r in md["summary"].records}
    assert rows == {(SORTER, "synth_a1_K6_C4", 2), (SORTER, "synth_b1_K6_C4", 2)}, md["text"]


def test_the_records_file_holds_every_record_after_the_last_result(deployment, backfill):
    def records_of_all_pairs():
        for record in deployment.instance.fetch_materializations(dg.AssetKey("sorting_records"), limit=100).records:
            md = plain_metadata(record.event_log_entry)
            # Records are made from the sortings (not the comparisons): any run after the last sorting.
            if record.timestamp > backfill["last_sorting"] and md["num_records"] == len(backfill["pairs"]):
                return md
        return None

    md = deployment.dev.wait_for(records_of_all_pairs, TICK_S + SUMMARY_RUN_ALLOWANCE_S, "sorting_records of every pair")
    records = json.loads(open(md["path"]).read())
    assert sorted((r["sorterName"], r["studyName"], r["recordingName"]) for r in records) == sorted(
        (SORTER, rec.study_name, rec.name) for rec in deployment.campaign.recordings()
    )
    assert not any(r["errored"] for r in records)


def test_the_ui_terminate_button_stops_a_running_sort(deployment, backfill):
    [rec] = [r for r in deployment.campaign.recordings() if r.study_set_name == "SYNTH_SET_A"][:1]
    key = str(pair_key(STOPPED_SORTER, rec))
    run_id = deployment.dev.launch_partition_run(["sorting"], key)

    def sorting_worker():
        if deployment.instance.get_run_by_id(run_id).status != dg.DagsterRunStatus.STARTED:
            return None
        status = service_status(deployment.service) or {"slots": []}
        busy = [s["worker_pid"] for s in status["slots"] if s["busy"]]
        return busy[0] if busy else None

    worker_pid = deployment.dev.wait_for(sorting_worker, 90, f"{STOPPED_SORTER} sorting in a service worker", poll_s=0.2)
    deployment.dev.terminate_run(run_id)
    asked = time.monotonic()
    deployment.dev.wait_for(lambda: not _alive(worker_pid), 10, f"worker {worker_pid} gone after the terminate", poll_s=0.1)
    gone_s = time.monotonic() - asked
    status = deployment.dev.wait_for(
        lambda: (r := deployment.instance.get_run_by_id(run_id)).is_finished and r.status, 60, "the run finished"
    )
    assert status == dg.DagsterRunStatus.CANCELED
    assert gone_s < 10
    assert key not in deployment.instance.get_materialized_partitions(dg.AssetKey("sorting"))
    deployment.dev.wait_for(
        # A status that could not be read (None) is not yet an answer: ask again.
        lambda: (status := service_status(deployment.service)) is not None and not any(s["busy"] for s in status["slots"]),
        5,
        "the stopped sort's slot freed",
    )


def _run_process_of(deployment: Deployment, run_id: str) -> int | None:
    """The run process executing a run, from the tag its run launcher sets."""
    from sf_assets.core.launcher_identity import LauncherIdentity
    from sf_assets.orchestration.run_launcher import RUN_WORKER_TAG

    identity = LauncherIdentity.parse(deployment.instance.get_run_by_id(run_id).tags.get(RUN_WORKER_TAG, ""))
    return identity.pid if identity is not None else None


def test_the_backfills_runs_are_threads_of_one_run_process(deployment, backfill):
    """Every run of the backfill (a sorting and its comparison each) was launched by the daemon, so with
    one environment: one run process executed them all, not a process each."""
    runs = deployment.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill["id"]}))
    processes = {run.run_id: _run_process_of(deployment, run.run_id) for run in runs}
    assert len(runs) >= len(backfill["pairs"]) and None not in processes.values(), processes
    assert len(set(processes.values())) == 1, processes


def test_terminating_a_run_leaves_the_runs_sharing_its_process_running(deployment, backfill):
    """Two SpykingCircus2 sorts from the UI at once, one on each slot, their runs threads of one run
    process; the UI terminates one: it is canceled and its sort stopped, the other sorts to the end."""
    first, second = [r for r in deployment.campaign.recordings() if r.study_set_name == "SYNTH_SET_A"][:2]
    stopped, kept = (
        deployment.dev.launch_partition_run(["sorting"], str(pair_key(STOPPED_SORTER, rec))) for rec in (first, second)
    )

    def both_sorting():
        runs = [deployment.instance.get_run_by_id(run_id) for run_id in (stopped, kept)]
        status = service_status(deployment.service) or {"slots": []}
        busy = [s["worker_pid"] for s in status["slots"] if s["busy"]]
        if any(r.status != dg.DagsterRunStatus.STARTED for r in runs) or len(busy) < 2:
            return None
        return busy

    deployment.dev.wait_for(both_sorting, 120, "both SpykingCircus2 runs sorting", poll_s=0.2)
    assert _run_process_of(deployment, stopped) == _run_process_of(deployment, kept)
    process = _run_process_of(deployment, stopped)
    deployment.dev.terminate_run(stopped)
    finished = lambda run_id: (r := deployment.instance.get_run_by_id(run_id)).is_finished and r.status  # noqa: E731
    assert deployment.dev.wait_for(lambda: finished(stopped), 60, "the terminated run finished") == (
        dg.DagsterRunStatus.CANCELED
    )
    assert _alive(process), "the run process of the terminated run lives on: another run is executing in it"
    assert deployment.dev.wait_for(lambda: finished(kept), 180, "the other run finished") == dg.DagsterRunStatus.SUCCESS
    materialized = deployment.instance.get_materialized_partitions(dg.AssetKey("sorting"))
    assert str(pair_key(STOPPED_SORTER, second)) in materialized
    assert str(pair_key(STOPPED_SORTER, first)) not in materialized


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the service) is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_command_line_run_beside_dagster_dev_is_terminated_from_the_ui(deployment, backfill, tmp_path):
    """`sf-assets run-sortings` while `dagster dev` runs: its runs wait in the same queue, the
    daemon dequeues them, they sort on the same sort service, and the UI's Terminate stops one."""
    import subprocess

    from harness.dagster_dev import console_script

    out = tmp_path / "records.json"
    command = [
        console_script("sf-assets"), "run-sortings", "-s", str(deployment.manifest), "-l", str(deployment.spec),
        "-o", str(out), "-w", "1",
    ]
    log = tmp_path / "run-sortings.log"
    with open(log, "w") as stream:
        cli = subprocess.Popen(command, env={**os.environ, **deployment.env}, stdout=stream, stderr=subprocess.STDOUT)
    try:
        def cli_sorting():
            """The started run whose sort a worker is running (others may wait in the service for
            the launch's one sort at a time), and that worker."""
            status = service_status(deployment.service) or {"slots": []}
            busy = [s["worker_pid"] for s in status["slots"] if s["busy"] and "spykingcircus2" in s["sorters"]]
            if not busy:
                return None
            runs = deployment.instance.get_runs(
                dg.RunsFilter(job_name="sorting_job", statuses=[dg.DagsterRunStatus.STARTED])
            )
            for run in runs:
                for record in deployment.instance.get_records_for_run(run.run_id).records:
                    message = record.event_log_entry.user_message or ""
                    if "sort service slot" in message and message.split("worker pid ")[-1].split()[0] == str(busy[0]):
                        return run.run_id, busy[0]
            return None

        run_id, worker_pid = deployment.dev.wait_for(cli_sorting, 120, "a command-line sorting run sorting", poll_s=0.2)
        assert "sf-assets/lease" in deployment.instance.get_run_by_id(run_id).tags, "launched by the command line"
        deployment.dev.terminate_run(run_id)
        deployment.dev.wait_for(lambda: not _alive(worker_pid), 10, f"worker {worker_pid} gone after the terminate", poll_s=0.1)
        assert cli.wait(timeout=300) == 1, log.read_text()[-3000:]
    finally:
        if cli.poll() is None:
            cli.kill()
    assert deployment.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert "canceled" in log.read_text()
