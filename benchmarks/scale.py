"""sf-assets at SpikeForest's size: 16 study sets, 64 studies, 888 recordings, 10 sorters.

No data are needed: the manifest is synthetic but well-formed (fake sha1
URIs), and nothing is sorted.  What is measured, each in a fresh process
(its wall time and peak RSS, from ``wait4``):

* ``load_s``: ``python -c "import sf_assets.definitions"`` (and, printed
  apart, the in-process split: Dagster's import, ours, building the repository);
* ``sensor_tick_s``: one sensor-daemon iteration of the real
  ``studyset_sensor`` on a fresh instance, in-process like ``dagster dev``'s
  daemon: read and validate manifest and spec, register 888 + 10 dynamic
  partitions, request a run for each of the 888 recordings (the ~8,900
  (sorter, recording) pairs wait in the cursor for their recording);
  in a process that has evaluated the sensor once before (as a running
  daemon's code server has), the cold first evaluation printed apart;
* ``check_config_s``: ``sf-assets check-config -s M -l S`` (a whole process);
* ``workspace_diff_s``: the workspace_sync decision for 9,768 entries
  (888 recordings, 888 ground truths, 7,992 sortings: one sort in ten errored
  and skipped) against 9,000 labels already in a SQLite workspace: ``entries_from_records`` + ``WorkspaceStore.sync(dry_run=True)``
  (which reads the labels and calls ``plan_sync``);
* ``peak_rss_mb``: the largest of those processes' peak resident memory.

Also printed, not in the last line: the sensor's own evaluation (which
registers the partitions in bulk) against the whole daemon iteration, the
next tick (planning the waiting pairs), and reading ~8,900 sorting records back from the event log
(what ``sorting_records`` and ``workspace_sync`` do first).

Last line: ``load_s=A sensor_tick_s=B check_config_s=C workspace_diff_s=D peak_rss_mb=M``.

Run: ``make bench-scale`` or ``.venv/bin/python benchmarks/scale.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NUM_STUDY_SETS = 16
STUDIES_PER_SET = 4
NUM_RECORDINGS = 888
SORTERS = (
    "MountainSort5",
    "SpykingCircus2",
    "Tridesclous2",
    "Kilosort2",
    "Kilosort3",
    "Kilosort4",
    "MountainSort4",
    "SpykingCircus",
    "IronClust",
    "HerdingSpikes2",
)
EXISTING_LABELS = 9000


# ------------------------------------------------------------------ inputs


def fake_uri(seed: str, name: str) -> str:
    return f"sha1://{hashlib.sha1(seed.encode()).hexdigest()}/{name}"


def recordings_per_study() -> list[int]:
    """888 recordings over 64 studies: 56 of 14 and 8 of 13."""
    num_studies = NUM_STUDY_SETS * STUDIES_PER_SET
    base, extra = divmod(NUM_RECORDINGS, num_studies)
    return [base + 1 if i < extra else base for i in range(num_studies)]


def build_manifest() -> dict:
    """A manifest of SpikeForest's shape; names mix the characters real ones use (_ - .)."""
    counts = iter(recordings_per_study())
    study_sets = []
    for s in range(NUM_STUDY_SETS):
        set_name = f"SCALE_SET_{s:02d}"
        studies = []
        for t in range(STUDIES_PER_SET):
            study_name = f"scale_{s:02d}-study.{t}"
            recordings = []
            for r in range(next(counts)):
                name = f"rec_{r:03d}_4c-600s"
                recordings.append(
                    {
                        "name": name,
                        "studyName": study_name,
                        "studySetName": set_name,
                        "sampleRateHz": 30000.0,
                        "numChannels": 4 + 4 * (t % 2),
                        "durationSec": 600.0,
                        "numTrueUnits": 10,
                        "spikeSign": -1,
                        "recordingUri": fake_uri(f"{study_name}/{name}/recording", f"{name}.json"),
                        "sortingTrueUri": fake_uri(f"{study_name}/{name}/truth", f"{name}.firings_true.json"),
                    }
                )
            studies.append(
                {
                    "name": study_name,
                    "studySetName": set_name,
                    "recordings": recordings,
                    "self_reference": fake_uri(study_name, f"{study_name}.json"),
                }
            )
        study_sets.append(
            {
                "name": set_name,
                "info": {"label": set_name, "electrode_type": "silicon-probe", "ground_truth": "simulation"},
                "description": f"# {set_name}\n\nSynthetic stand-in of a SpikeForest study set (no data).",
                "studies": studies,
                "self_reference": fake_uri(set_name, f"{set_name}.json"),
            }
        )
    return {"StudySets": study_sets}


def write_inputs(root: Path) -> tuple[Path, Path, int]:
    manifest = build_manifest()
    manifest_path = root / "studysets.json"
    manifest_path.write_text(json.dumps(manifest, indent=4))
    names = [s["name"] for s in manifest["StudySets"]]
    spec = {
        "studysets": str(manifest_path),
        "studyset-names": names,
        "spike-sorters": [{"name": name, "params": {}, "studysets": list(names)} for name in SORTERS],
    }
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    num_recordings = sum(len(t["recordings"]) for s in manifest["StudySets"] for t in s["studies"])
    return manifest_path, spec_path, num_recordings


# ------------------------------------------------------------------ children


def child_load(state: dict) -> dict:
    started = time.monotonic()
    import dagster  # noqa: F401

    dagster_s = time.monotonic() - started
    import sf_assets.definitions as definitions

    imported_s = time.monotonic() - started
    repository = definitions.defs.get_repository_def()
    return {
        "dagster_import_s": dagster_s,
        "definitions_import_s": imported_s,
        "load_s": time.monotonic() - started,
        "num_assets": len(repository.asset_graph.get_all_asset_keys()),
    }


def _instance(root: Path):
    import dagster as dg

    home = root / "dagster"
    home.mkdir(parents=True)
    # The project's instance: SQLite storage, queued run coordinator.
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["SF_ASSETS_DAGSTER_DIR"] = str(home / "storage")
    return dg.DagsterInstance.from_config(str(home))


def _cursor(instance):
    """The studyset sensor's cursor on ``instance``."""
    from dagster._core.scheduler.instigation import InstigatorType

    from sf_assets.core.studyset_cursor import StudysetCursor
    from sf_assets.orchestration.sensors import STUDYSET_SENSOR

    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return StudysetCursor.decode(next(s.instigator_data.cursor for s in states if s.name == STUDYSET_SENSOR))


def child_tick(state: dict) -> dict:
    import dagster as dg

    from sf_assets.definitions import defs
    from sf_assets.orchestration.partitions import RECORDINGS, SORTERS as SORTER_PARTITIONS
    from sf_assets.orchestration.resources import KacheryResource, SortingEngineResource, StudysetResource
    from sf_assets.orchestration.sensors import SENSOR_INTERVAL_S, studyset_sensor
    from harness.automation import deployment

    root = Path(state["root"]) / "tick"
    os.environ.update(
        SF_ASSETS_HOME=str(root / "home"),
        SF_ASSETS_KACHERY_DIR=str(root / "kachery"),
        SF_ASSETS_SPEC=state["spec"],
        SF_ASSETS_STUDYSETS=state["manifest"],
    )
    result: dict = {}

    def evaluate_alone(folder: str) -> float:
        """The sensor's own evaluation (bulk partition registration included), on a scratch instance."""
        with _instance(root / folder) as scratch:
            resources = {
                "studyset": StudysetResource(spec_source=state["spec"], manifest_source=state["manifest"]),
                "kachery": KacheryResource(root_dir=str(root / "kachery")),
                "sorting_engine": SortingEngineResource(work_root=str(root / "home" / "sorts")),
            }
            with dg.build_sensor_context(
                instance=scratch, repository_def=defs.get_repository_def(), resources=resources
            ) as context:  # closing it tears down the resources it built
                started = time.monotonic()
                sensor_result = studyset_sensor(context)
                elapsed = time.monotonic() - started
            if isinstance(sensor_result, dg.SkipReason):
                raise SystemExit(f"the sensor skipped its tick: {sensor_result.skip_message}")
            return elapsed

    # First in this process: Dagster's lazy imports and first queries, which a running
    # daemon's code server pays once; measured apart so the tick below is a steady one.
    result["first_evaluation_s"] = evaluate_alone("cold")

    # The real thing: one sensor-daemon iteration on a fresh instance.
    with _instance(root / "daemon") as instance:
        with deployment(root, instance) as location:
            started = time.monotonic()
            location.tick_sensors()
            result["sensor_tick_s"] = time.monotonic() - started
            result["recording_partitions"] = len(instance.get_dynamic_partitions(RECORDINGS))
            result["sorter_partitions"] = len(instance.get_dynamic_partitions(SORTER_PARTITIONS))
            result["runs_requested"] = instance.get_runs_count()
            result["pairs_waiting"] = len(_cursor(instance).waiting)
            # The next tick, with every recording's run still queued: it plans every waiting pair.
            time.sleep(SENSOR_INTERVAL_S)
            started = time.monotonic()
            location.tick_sensors()
            result["waiting_tick_s"] = time.monotonic() - started
            result["pairs_still_waiting"] = len(_cursor(instance).waiting)
    result["sensor_evaluation_s"] = evaluate_alone("warm")
    return result


def _records(campaign, errored_every: int = 10) -> list:
    """One sorting record per assigned pair; every tenth errored, as in a real campaign."""
    from sf_assets.core.records import SortingRecord

    records = []
    for i, (sorter_spec, rec) in enumerate(campaign.jobs):
        errored = i % errored_every == 0
        sorting_uri = fake_uri(f"{sorter_spec.name}/{rec.label}", "sorting.json")
        records.append(
            SortingRecord(
                recording_name=rec.name,
                study_name=rec.study_name,
                sorter_name=sorter_spec.name,
                sorting_parameters={},
                console_out_uri=fake_uri(f"{sorter_spec.name}/{rec.label}/console", "console_out.json"),
                cpu_time_sec=123.4,
                errored=errored,
                start_time=1.7e9,
                end_time=1.7e9 + 200,
                sorting_output=None
                if errored
                else {"sorting_format": "mda", "data": {"sorting_object_uri": sorting_uri}},
                recording_uri=rec.recording_uri,
                ground_truth_uri=rec.sorting_true_uri,
            )
        )
    return records


def _campaign(state: dict):
    from sf_assets.core.campaign import Campaign
    from sf_assets.stores.inputs import load_config

    return Campaign(*load_config(state["manifest"], state["spec"], None))


def child_workspace(state: dict) -> dict:
    from sf_assets.core.workspace_plan import entries_from_records
    from sf_assets.stores.workspace import WorkspaceStore

    campaign = _campaign(state)
    records = _records(campaign)
    url = f"sqlite:///{Path(state['root']) / 'workspace.db'}"
    setup = WorkspaceStore(url)
    uri = setup.create_workspace("scale")
    entries, _ = entries_from_records(records)
    setup.sync(uri, entries[:EXISTING_LABELS])
    setup.dispose()

    store = WorkspaceStore(url)
    started = time.monotonic()
    entries, notes = entries_from_records(records)
    report = store.sync(uri, entries, dry_run=True)
    elapsed_s = time.monotonic() - started
    assert len(report.already_present) == EXISTING_LABELS
    return {
        "workspace_diff_s": elapsed_s,
        "entries": len(entries),
        "existing": EXISTING_LABELS,
        "to_add": len(report.added),
        "errored_skipped": len(notes),
    }


def child_event_log(state: dict) -> dict:
    """~8,900 sorting records in the event log, read back as the fan-in assets read them."""
    import dagster as dg

    from sf_assets.orchestration.assets.results import collect_records
    from sf_assets.orchestration.assets.studysets import register_partitions
    from sf_assets.orchestration.partitions import pair_key, sorting_partitions

    campaign = _campaign(state)
    records = _records(campaign)
    with _instance(Path(state["root"]) / "eventlog") as instance:
        register_partitions(instance, campaign)
        started = time.monotonic()
        for (sorter_spec, rec), record in zip(campaign.jobs, records):
            metadata = {"record": dg.MetadataValue.json(record.to_json_dict()), "errored": record.errored}
            event = (dg.AssetObservation if record.errored else dg.AssetMaterialization)(
                asset_key="sorting", partition=str(pair_key(sorter_spec.name, rec)), metadata=metadata
            )
            instance.report_runless_asset_event(event)
        write_s = time.monotonic() - started
        started = time.monotonic()
        read = collect_records(instance, campaign)
        read_s = time.monotonic() - started
        assert len(read) == len(records)
        from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

        started = time.monotonic()
        get_and_update_asset_status_cache_value(instance, dg.AssetKey("sorting"), sorting_partitions, instance)
        status_s = time.monotonic() - started
    return {"event_write_s": write_s, "collect_records_s": read_s, "partition_status_s": status_s, "events": len(records)}


CHILDREN = {"load": child_load, "tick": child_tick, "workspace": child_workspace, "eventlog": child_event_log}


# -------------------------------------------------------------------- parent


def run(argv: list[str], env: dict) -> tuple[float, float, str, str]:
    """Run a command to the end; return (wall s, peak RSS MB, stdout, stderr) measured with wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:5])} failed (exit {proc.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return wall_s, usage.ru_maxrss / 1024.0, stdout, stderr


def run_child(name: str, state_file: Path, env: dict) -> tuple[float, float, dict]:
    wall_s, rss_mb, stdout, _ = run([sys.executable, __file__, "--child", name, "--state", str(state_file)], env)
    return wall_s, rss_mb, json.loads(stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", help="keep everything here (default: a temporary folder, removed at the end)")
    p.add_argument(
        "--no-event-log",
        action="store_true",
        help="skip the event-log read-back (its set-up writes ~8,900 events: one to two minutes)",
    )
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(Path(args.state).read_text()))))
        return 0

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="sf-assets-scale-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KACHERY_CLOUD_DIR": str(root / "kachery-cloud"),
        "SF_ASSETS_HOME": str(root / "home"),
        "PYTHONWARNINGS": "ignore",
    }
    try:
        manifest, spec, num_recordings = write_inputs(root)
        state_file = root / "state.json"
        state_file.write_text(json.dumps({"root": str(root), "manifest": str(manifest), "spec": str(spec)}))
        num_pairs = num_recordings * len(SORTERS)
        print(
            f"manifest: {NUM_STUDY_SETS} study sets, {NUM_STUDY_SETS * STUDIES_PER_SET} studies, {num_recordings} "
            f"recordings ({manifest.stat().st_size / 1e6:.1f} MB); {len(SORTERS)} sorters -> {num_pairs} sorting partitions",
            flush=True,
        )
        rss: dict[str, float] = {}

        load_s, rss["load"], _, _ = run([sys.executable, "-c", "import sf_assets.definitions"], env)
        _, _, load = run_child("load", state_file, env)
        print(
            f"load definitions:  {load_s:.2f} s (python -c 'import sf_assets.definitions'); in-process "
            f"{load['load_s']:.2f} s: import dagster {load['dagster_import_s']:.2f} s, the rest of "
            f"sf_assets.definitions {load['definitions_import_s'] - load['dagster_import_s']:.2f} s, repository "
            f"{load['load_s'] - load['definitions_import_s']:.2f} s; peak RSS {rss['load']:.0f} MB",
            flush=True,
        )

        _, rss["tick"], tick = run_child("tick", state_file, env)
        print(
            f"sensor tick:       {tick['sensor_tick_s']:.2f} s (one daemon iteration: {tick['recording_partitions']} "
            f"recording + {tick['sorter_partitions']} sorter partitions registered, {tick['runs_requested']} runs "
            f"requested (a studysets run and one per recording), {tick['pairs_waiting']} pairs waiting for their "
            f"recording); alone: sensor evaluation with bulk "
            f"partition registration {tick['sensor_evaluation_s']:.2f} s, so the daemon around it takes "
            f"{tick['sensor_tick_s'] - tick['sensor_evaluation_s']:.2f} s; the first evaluation in a fresh "
            f"process (Dagster's lazy imports, first queries) {tick['first_evaluation_s']:.2f} s; "
            f"peak RSS {rss['tick']:.0f} MB",
            flush=True,
        )
        print(
            f"  the next tick, planning the {tick['pairs_waiting']} waiting pairs while their recordings' runs are "
            f"queued: {tick['waiting_tick_s']:.2f} s ({tick['pairs_still_waiting']} still waiting)",
            flush=True,
        )

        cli = str(Path(sys.executable).with_name("sf-assets"))
        check_s, rss["check_config"], out, _ = run([cli, "check-config", "-s", str(manifest), "-l", str(spec)], env)
        summary = json.loads(out)
        assert summary["num_sorting_jobs"] == num_pairs, summary["num_sorting_jobs"]
        print(f"check-config:      {check_s:.2f} s (whole process); peak RSS {rss['check_config']:.0f} MB", flush=True)

        _, rss["workspace"], ws = run_child("workspace", state_file, env)
        print(
            f"workspace diff:    {ws['workspace_diff_s']:.2f} s ({ws['entries']} entries against {ws['existing']} "
            f"labels: {ws['to_add']} to add, {ws['errored_skipped']} errored sortings skipped); "
            f"peak RSS {rss['workspace']:.0f} MB",
            flush=True,
        )

        if not args.no_event_log:
            _, rss["eventlog"], log = run_child("eventlog", state_file, env)
            print(
                f"  event log: {log['events']} sorting records read back by collect_records in "
                f"{log['collect_records_s']:.2f} s; partition status (UI) {log['partition_status_s']:.2f} s; "
                f"writing them took {log['event_write_s']:.1f} s; peak RSS {rss['eventlog']:.0f} MB",
                flush=True,
            )

        peak = max(rss.values())
        print(
            f"load_s={load_s:.2f} sensor_tick_s={tick['sensor_tick_s']:.2f} check_config_s={check_s:.2f} "
            f"workspace_diff_s={ws['workspace_diff_s']:.2f} peak_rss_mb={peak:.0f}"
        )
    finally:
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
