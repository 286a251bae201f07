"""The overhead benchmark's daemon path: the grid sorted by a backfill launched as the UI launches it.

A round starts ``dagster dev`` (webserver, daemons, code server) on a fresh
instance with the project's ``dagster.yaml`` and a sort service of its own,
switches the studyset sensor off (the UI's toggle), registers the grid's
partitions (what the sensor or the ``studysets`` asset does first), then
sends ``launchPartitionBackfill`` for the grid's recordings, ground truths,
sortings and comparisons, as the UI's backfill dialog sends it, with the
round's canary window in its run config (off by default, as on the other
sides).  It
ends when ``sorter_summary`` has been materialized from every pair's
comparison (``results_automation`` requests it).  Starting the deployment is
not timed; everything after the request is.

From the event log: the request time, the first ``sorting`` step's start
(STEP_START), the covering summary's materialization, and each run's
enqueue / dequeue / start / end, to show which of Dagster's intervals the
path waits on (the backfill daemon's passes, the queue's dequeue interval,
the automation sensor's ticks).

:func:`new_sorter_latency` then measures, on a round's deployment, what a
user sees when they add a sorter to the spec while ``dagster dev`` runs:
from the spec edit to a summary that includes the new sorter.
"""
from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from pathlib import Path

import yaml

WAIT_S = 900.0


def run_timeline(instance, run_ids: list[str]) -> list[dict]:
    """Per run: its kind (the assets it targets), and when it was enqueued, launched (dequeued and handed
    to the run launcher), started, ended, and its ``sorting`` step started (epoch s)."""
    from dagster import DagsterEventType

    stages = {
        DagsterEventType.RUN_ENQUEUED: "enqueued",
        DagsterEventType.RUN_DEQUEUED: "dequeued",
        DagsterEventType.RUN_STARTING: "launched",
        DagsterEventType.RUN_START: "started",
        DagsterEventType.RUN_SUCCESS: "ended",
        DagsterEventType.RUN_FAILURE: "ended",
        DagsterEventType.RUN_CANCELED: "ended",
        DagsterEventType.STEP_START: "step",
    }
    timeline = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        row = {"run_id": run_id, "kind": ",".join(sorted(k.to_user_string() for k in run.asset_selection or []))}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            stage = stages.get(event.event_type) if event is not None else None
            if stage == "step":
                if entry.step_key == "sorting":
                    row.setdefault("sort_step", entry.timestamp)
            elif stage is not None:
                row.setdefault(stage, entry.timestamp)
        timeline.append(row)
    return timeline


def _stage_range(rows: list[dict], stage: str, origin: float) -> str:
    values = [r[stage] - origin for r in rows if stage in r]
    return f"{min(values):6.1f}-{max(values):6.1f}" if values else "     -      -"


def print_timeline(timeline: list[dict], origin: float, automation_ticks: list[float]) -> None:
    """The runs grouped by kind, seconds after ``origin``: what the path waited on."""
    groups: dict[str, list[dict]] = {}
    for row in timeline:
        groups.setdefault(row["kind"], []).append(row)
    print("  runs (s after the request)           enqueued        launched        started         ended")
    for kind, rows in sorted(groups.items(), key=lambda kv: min(r.get("enqueued", 1e18) for r in kv[1])):
        print(
            f"  {len(rows)} x {kind[:30]:30s} "
            + "  ".join(_stage_range(rows, s, origin) for s in ("enqueued", "launched", "started", "ended"))
        )
    shown = ", ".join(f"{t - origin:.1f}" for t in automation_ticks if t >= origin)
    print(f"  results_automation ticks at: {shown}")


def engine_config(deploy_env: dict, canary_s: float) -> dict:
    """The backfill's run config: the round's canary window, as the other sides have it (equal work).

    A resource's run config replaces its configured values, so ``work_root``
    (required) is given again, as the code location has it.
    """
    return {
        "resources": {
            "sorting_engine": {"config": {"work_root": deploy_env["SF_ASSETS_WORK_DIR"], "canary_first_n_s": canary_s}}
        }
    }


def daemon_round(state: dict, round_dir: Path, env: dict, keep_running=None) -> dict:
    """One timed round; ``keep_running(dev, instance, state, round_dir)`` runs on the deployment before it stops.

    Returns
    -------
    ``start_latency_s`` (request to the first sort's start), ``sort_to_summary_s``
    (first sort's start to the covering summary), ``request_to_summary_s``,
    the run timeline and the automation ticks (epoch s), and what
    ``keep_running`` returned under ``extra``.
    """
    import dagster as dg

    from sf_assets.orchestration.assets.studysets import register_partitions
    from sf_assets.core.campaign import Campaign
    from harness.dagster_dev import (
        campaign_backfill,
        deployment_environment,
        running_dagster_dev,
        summary_covering,
        write_instance_yaml,
    )
    from sf_assets.stores.inputs import load_config
    from sf_assets.orchestration.sensors import STUDYSET_SENSOR
    from sf_assets.stores.kachery import KacheryStore

    home = round_dir / "dagster-home"
    write_instance_yaml(home)
    spec = round_dir / "spec.yaml"  # written once the studyset sensor is off: it must not launch the grid itself
    service_dir = Path(tempfile.mkdtemp(prefix="sfb-", dir="/tmp"))  # short: it holds a Unix socket
    deploy_env = deployment_environment(round_dir / "data", Path(state["kachery_dir"]), spec, Path(state["manifest"]), service_dir)
    try:
        with running_dagster_dev(home, {**env, **deploy_env}, round_dir / "dagster-dev.log") as dev:
            ready_s = dev.wait_until_ready()
            with dg.DagsterInstance.from_config(str(home)) as instance:
                dev.set_sensor_running(STUDYSET_SENSOR, False)
                shutil.copy(state["spec"], spec)
                campaign = Campaign(*load_config(state["manifest"], str(spec), KacheryStore(state["kachery_dir"])))
                register_partitions(instance, campaign)
                request = campaign_backfill(campaign)
                requested = time.time()
                backfill_id = dev.launch_partition_backfill(
                    request, title="benchmark: the grid from the UI", run_config=engine_config(deploy_env, state["canary_s"])
                )
                summary = dev.wait_for(
                    lambda: summary_covering(instance, len(request["sorting"]), after=requested),
                    WAIT_S,
                    "a summary of every pair",
                )
                backfill_runs = [r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))]
                failed = [r.run_id for r in instance.get_runs(dg.RunsFilter(run_ids=backfill_runs)) if not r.is_success]
                if failed:
                    raise SystemExit(f"daemon round: backfill runs failed: {failed}; see {dev.log_path}")
                since = datetime.datetime.fromtimestamp(requested, tz=datetime.timezone.utc)
                fan_in_runs = [
                    r.dagster_run.run_id
                    for r in instance.get_run_records(dg.RunsFilter(created_after=since))
                    if r.dagster_run.run_id not in backfill_runs
                ]
                timeline = run_timeline(instance, backfill_runs + fan_in_runs)
                first_sort = min(row["sort_step"] for row in timeline if "sort_step" in row)
                ticks = sorted(t["timestamp"] for t in dev.sensor_ticks("results_automation"))
                extra = keep_running(dev, instance, state, round_dir, spec) if keep_running else None
    finally:
        shutil.rmtree(service_dir, ignore_errors=True)
    return {
        "ready_s": ready_s,
        "requested": requested,
        "start_latency_s": first_sort - requested,
        "sort_to_summary_s": summary.timestamp - first_sort,
        "request_to_summary_s": summary.timestamp - requested,
        "timeline": timeline,
        "automation_ticks": ticks,
        "extra": extra,
    }


def new_sorter_latency(dev, instance, state: dict, round_dir: Path, spec: Path, sorter: str = "Simple") -> dict:
    """Add ``sorter`` to the running deployment's spec; seconds from the edit to a summary that includes it.

    The studyset sensor is switched on first and its first tick (which finds
    nothing new: the grid is sorted) is let through; the spec is edited right
    after it, so the edit waits a whole sensor interval: the worst case a user
    sees.  ``sensor_wait_s`` says how much of the figure that wait was.  The
    sensor's runs run with the code location's configuration: the
    canary on (5 s), as a user has it.
    """
    from harness.dagster_dev import summary_covering
    from sf_assets.orchestration.sensors import STUDYSET_SENSOR

    switched_on = time.time()
    dev.set_sensor_running(STUDYSET_SENSOR, True)
    dev.wait_for(
        lambda: [t for t in dev.sensor_ticks(STUDYSET_SENSOR, 5) if t["timestamp"] >= switched_on and t["status"] != "STARTED"],
        180,
        "the studyset sensor's first tick",
    )
    document = yaml.safe_load(spec.read_text())
    if any(s["name"] == sorter for s in document["spike-sorters"]):
        raise SystemExit(f"new sorter: {sorter} is already in the grid's spec {spec}; leave it out of --sorters")
    study_sets = sorted({name for s in document["spike-sorters"] for name in s["studysets"]})
    document["spike-sorters"].append({"name": sorter, "params": {}, "studysets": study_sets})
    new_pairs = state["num_recordings"]
    tmp = spec.with_name(spec.name + ".new")
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    edited = time.time()
    tmp.replace(spec)  # whole, at once: the sensor never reads half a spec
    summary = dev.wait_for(
        lambda: summary_covering(instance, state["num_pairs"] + new_pairs, after=edited),
        WAIT_S,
        f"a summary including {sorter}",
    )
    seen = [t for t in dev.sensor_ticks(STUDYSET_SENSOR, 20) if t["timestamp"] >= edited and t["status"] == "SUCCESS"]
    return {
        "sorter": sorter,
        "pairs": new_pairs,
        "edit_to_summary_s": summary.timestamp - edited,
        "sensor_wait_s": (min(t["timestamp"] for t in seen) - edited) if seen else float("nan"),
        "sensor_interval_s": _sensor_interval(),
    }


def _sensor_interval() -> float:
    from sf_assets.orchestration.sensors import TICK_PERIOD_S

    return float(TICK_PERIOD_S)
