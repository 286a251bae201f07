"""The demo campaign two ways: ``make demo``'s command line, and the studyset sensor under ``dagster dev``.

The demo studyset (8 recordings x 3 sorters, the one ``make demo`` sorts) is
generated once into a kachery store; then, alternately, each way sorts it on
a fresh Dagster instance (the project's ``dagster.yaml``) with a cold sort
service of its own, as a newcomer meets it:

* **command line**: ``sf-assets demo --workercount W`` in a fresh process;
* **sensor**: ``dagster dev`` on a fresh instance whose configured spec does
  not exist yet; once the studyset sensor has ticked (and skipped: no spec),
  the spec is written, whole, at once, as a user drops it in place.  The
  sensor registers the partitions and requests the runs; ``results_automation``
  lands the summary.

Printed per round, from the instance's event log: first run enqueued to last
run ended (the campaign), sorting runs' total and median duration; for the
sensor, the spec write to the first sort's start (``sensor_first_sort_s``) and
to the summary covering every pair.  Last line: ``demo_cli_s=A demo_sensor_s=B
sensor_first_sort_s=L`` (means over the rounds; campaign times).

Run: ``make bench-demo`` or ``.venv/bin/python benchmarks/demo_paths.py [--rounds N]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon_round import WAIT_S, run_timeline

REPO = Path(__file__).resolve().parents[1]


def campaign_times(instance, since: float) -> dict:
    """The runs created after ``since`` (epoch s): first enqueued to last ended, and the sorting runs' durations."""
    import datetime

    import dagster as dg

    after = datetime.datetime.fromtimestamp(since, tz=datetime.timezone.utc)
    run_ids = [r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(created_after=after))]
    timeline = run_timeline(instance, run_ids)
    jobs = {r.run_id: r.job_name for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids))}
    sorts = [row["ended"] - row["started"] for row in timeline if jobs[row["run_id"]] == "sorting_job" and "ended" in row]
    firsts = [row.get("enqueued", row.get("started")) for row in timeline]
    return {
        "runs": len(timeline),
        "campaign_s": max(row["ended"] for row in timeline if "ended" in row) - min(f for f in firsts if f),
        "sorting_runs": len(sorts),
        "sorting_total_s": sum(sorts),
        "sorting_median_s": statistics.median(sorts) if sorts else float("nan"),
        "first_sort_step": min((row["sort_step"] for row in timeline if "sort_step" in row), default=float("nan")),
        "failed": [row["run_id"] for row in timeline if instance.get_run_by_id(row["run_id"]).status != dg.DagsterRunStatus.SUCCESS],
    }


def studyset_folder(home: Path, source: Path) -> None:
    """Put the generated demo studyset where ``sf-assets demo`` looks for it, so it is not generated again."""
    (home / "studyset").mkdir(parents=True)
    for name in ("studysets.json", "spec.yaml"):
        shutil.copy(source / name, home / "studyset" / name)


def cli_round(root: Path, kachery: Path, studyset: Path, workers: int) -> dict:
    import dagster as dg

    from harness.dagster_dev import write_instance_yaml

    home = root / "home"
    studyset_folder(home, studyset)
    dagster_home = root / "dagster-home"
    write_instance_yaml(dagster_home)
    service_dir = Path(tempfile.mkdtemp(prefix="sfd-", dir="/tmp"))
    env = {
        **os.environ,
        "SF_ASSETS_HOME": str(home),
        "SF_ASSETS_KACHERY_DIR": str(kachery),
        "SF_ASSETS_SERVICE_DIR": str(service_dir),
        "DAGSTER_HOME": str(dagster_home),
    }
    started = time.time()
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("sf-assets")), "demo", "--workercount", str(workers)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT_S,
        )
        wall_s = time.time() - started
        if done.returncode != 0:
            raise SystemExit(f"sf-assets demo failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            times = campaign_times(instance, started)
    finally:
        from harness.dagster_dev import stop_sort_services

        stop_sort_services(service_dir)
        shutil.rmtree(service_dir, ignore_errors=True)
    return {**times, "wall_s": wall_s}


def sensor_round(root: Path, kachery: Path, studyset: Path) -> dict:
    import dagster as dg

    from harness.dagster_dev import deployment_environment, running_dagster_dev, summary_covering, write_instance_yaml
    from sf_assets.orchestration.sensors import STUDYSET_SENSOR

    dagster_home = root / "dagster-home"
    write_instance_yaml(dagster_home)
    spec = root / "spec.yaml"  # written once the deployment runs: that is the change the sensor sees
    service_dir = Path(tempfile.mkdtemp(prefix="sfd-", dir="/tmp"))
    env = deployment_environment(root / "data", kachery, spec, studyset / "studysets.json", service_dir)
    num_pairs = None
    try:
        with running_dagster_dev(dagster_home, env, root / "dagster-dev.log") as dev:
            dev.wait_until_ready()
            up = time.time()
            dev.wait_for(
                lambda: [t for t in dev.sensor_ticks(STUDYSET_SENSOR, 5) if t["timestamp"] >= up and t["status"] != "STARTED"],
                180,
                "the studyset sensor's first tick",
            )
            import yaml

            document = yaml.safe_load((studyset / "spec.yaml").read_text())
            from sf_assets.core.campaign import Campaign
            from sf_assets.stores.inputs import load_config

            num_pairs = len(Campaign(*load_config(str(studyset / "studysets.json"), str(studyset / "spec.yaml"), None)).jobs)
            tmp = spec.with_name("spec.yaml.new")
            tmp.write_text(yaml.safe_dump(document, sort_keys=False))
            written = time.time()
            tmp.replace(spec)
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                summary = dev.wait_for(lambda: summary_covering(instance, num_pairs, after=written), WAIT_S, "a covering summary")
                times = campaign_times(instance, written)
    finally:
        shutil.rmtree(service_dir, ignore_errors=True)
    return {
        **times,
        "pairs": num_pairs,
        "sensor_first_sort_s": times["first_sort_step"] - written,
        "spec_to_summary_s": summary.timestamp - written,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1, help="rounds of both ways, the first way alternating (default 1)")
    p.add_argument("--workers", type=int, default=4, help="the command line's --workercount (default 4, as make demo)")
    args = p.parse_args(argv)

    from sf_assets.cli.demo import ensure_studyset
    from sf_assets.stores.kachery import KacheryStore

    root = Path(tempfile.mkdtemp(prefix="sf-assets-demo-paths-"))
    try:
        kachery = root / "kachery"
        manifest, _spec = ensure_studyset(KacheryStore(str(kachery)), root / "studyset")
        studyset = Path(manifest).parent
        results: dict[str, list[dict]] = {"cli": [], "sensor": []}
        for i in range(args.rounds):
            order = ["cli", "sensor"] if i % 2 == 0 else ["sensor", "cli"]
            for way in order:
                round_dir = root / f"{way}-{i}"
                round_dir.mkdir()
                report = cli_round(round_dir, kachery, studyset, args.workers) if way == "cli" else sensor_round(round_dir, kachery, studyset)
                if report["failed"]:
                    raise SystemExit(f"{way} round {i}: runs did not succeed: {report['failed']}")
                results[way].append(report)
                extra = (
                    f"; spec written -> first sort {report['sensor_first_sort_s']:.1f} s, -> summary of every pair "
                    f"{report['spec_to_summary_s']:.1f} s"
                    if way == "sensor"
                    else f"; whole process {report['wall_s']:.1f} s"
                )
                print(
                    f"round {i} {way:6s}: campaign {report['campaign_s']:6.1f} s (first run enqueued to last ended, "
                    f"{report['runs']} runs); {report['sorting_runs']} sorting runs, total {report['sorting_total_s']:.1f} s, "
                    f"median {report['sorting_median_s']:.1f} s{extra}",
                    flush=True,
                )
        cli = statistics.mean(r["campaign_s"] for r in results["cli"])
        sensor = statistics.mean(r["campaign_s"] for r in results["sensor"])
        latency = statistics.mean(r["sensor_first_sort_s"] for r in results["sensor"])
        print(f"demo_cli_s={cli:.1f} demo_sensor_s={sensor:.1f} sensor_first_sort_s={latency:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
