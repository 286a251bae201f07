"""What sf-assets costs over a plain spikeinterface script that does the same sorts.

The same grid (recordings x sorters, default 4 recordings of 4 channels x 60 s,
MountainSort5 and SpykingCircus2) is sorted and compared with ground truth,
alternately (A B, then B A, ...):

* **A, sf-assets**: the command a user types, ``sf-assets run-sortings -s
  MANIFEST -l SPEC -o RECORDS -w workers --canary-s S``, on a fresh Dagster
  instance (SQLite, the project's dagster.yaml); canary off unless
  ``--canary-s`` (for equal work), job cache on but empty (fresh instance).
  Where its time went is read back afterwards from the instance's run
  records and event log, untimed;
* **B, plain**: ``spikeinterface.sorters.run_sorter_jobs`` (engine ``joblib``,
  ``n_jobs=workers``) then ``compare_sorter_to_ground_truth`` per pair, on the
  same recordings loaded from the same kachery store;
* **C, daemon**: ``dagster dev`` on a fresh instance, and a backfill of the
  grid launched the way the UI launches it (GraphQL ``launchPartitionBackfill``),
  timed from the first sort's start to the ``sorter_summary`` materialization
  that covers every pair (``daemon_round.py``); its fixed start, from the
  request to the first sort, is reported apart.  Its sorts run on the sort
  service's slots (one per core), not ``workers``.  Wall time only: its
  processes are the deployment's, which also serve the UI.

Each sf-assets round (A, C and the no-op re-run) gets a sort service of its
own, stopped when the round ends: warm workers left by one round would
otherwise serve the next.

First ``--warmup`` untimed rounds of each side: the first rounds after the
recordings are written were often 2-6 s slower here, for either side (the
cause is not pinned down: caches, the disk writing back what was just
written), and the side that goes first would pay it.

Each round is a fresh Python process, timed from outside, as a user would run
either (imports included; loky's reused workers cannot carry numba's compiled
code from one plain round to the next), for wall time and for the CPU time of
the process and everything it started, processes it left behind included
(which other work on the machine hardly changes).  Then a no-op re-run:
the same command again on the last sf-assets instance, where every sort is
a job-cache hit.

Prints the times per round, the mean of the rounds' sf-assets/plain ratios,
the orchestration overhead per sorting partition, where sf-assets spends its
time, the daemon path's run timeline (which of Dagster's intervals it waits
on), the new-sorter figure (with the last daemon round's deployment still
running and its studyset sensor on, the spec gains a ``Simple`` sorter on
every recording: seconds from the edit to a summary that includes it), and
as its last line ``overhead_ratio_cli=R1 overhead_ratio_daemon=R2
daemon_start_latency_s=L noop_rerun_s=S overhead_ratio=max(R1,R2)`` (wall
ratios against the plain round beside each; the no-op re-run's whole
process, imports included).

Run: ``make bench`` or ``.venv/bin/python benchmarks/overhead.py [--recordings N ...]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from daemon_round import daemon_round, new_sorter_latency, print_timeline

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SORTERS = "MountainSort5,SpykingCircus2"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recordings", type=int, default=4, help="recordings in the grid (default 4)")
    p.add_argument("--channels", type=int, default=4, help="channels per recording (default 4)")
    p.add_argument("--duration-s", type=float, default=60.0, help="seconds per recording (default 60)")
    p.add_argument("--sorters", default=DEFAULT_SORTERS, help=f"catalog names, comma-separated (default {DEFAULT_SORTERS})")
    p.add_argument("--workers", type=int, default=2, help="sorts at a time on both sides (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both sides, the first side alternating (default 2: A B B A)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds of both sides first (default 1): the first rounds after the data are written were often slower",
    )
    p.add_argument("--canary-s", type=float, default=0.0, help="sf-assets canary window; 0: off (default)")
    p.add_argument(
        "--numba-cache",
        action="store_true",
        help="experiment: every Python process of both sides (sort workers, joblib workers) keeps numba's "
        "compiled code on disk (cache=True by default, through a sitecustomize), warmed once before the rounds",
    )
    p.add_argument("--work-dir", help="keep everything here (default: a temporary folder, removed at the end)")
    p.add_argument("--child", choices=["plain", "profile", "warm"], help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------ children


def _dagster_home(round_dir: Path) -> Path:
    """The project's dagster.yaml over a fresh SQLite folder, as ``sf-assets`` runs it."""
    home = round_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


SUMMARY_LINE = re.compile(r"^(?P<sorted>\d+) sorted, (?P<cached>\d+) from the job cache, ")


def cli_command(state: dict, records: Path) -> list[str]:
    """``sf-assets run-sortings`` of the grid, as a user types it (``-w``, the round's canary window)."""
    return [
        sys.executable, "-m", "sf_assets.cli", "run-sortings",
        "-s", state["manifest"], "-l", state["spec"], "-o", str(records),
        "-w", str(state["workers"]), "--canary-s", str(state["canary_s"]),
    ]  # fmt: skip


def cli_env(state: dict, env: dict) -> dict:
    """The round's folders for the command: its data folder and its Dagster instance (:func:`_dagster_home`)."""
    round_dir = Path(state["round_dir"])
    home = round_dir / "dagster"
    return {
        **env,
        "DAGSTER_HOME": str(home),
        "SF_ASSETS_DAGSTER_DIR": str(home / "storage"),
        "SF_ASSETS_HOME": str(round_dir),
        "SF_ASSETS_KACHERY_DIR": state["kachery_dir"],
    }


class _Run(NamedTuple):
    """One of the round's runs, from its run record."""

    job_name: str
    partition_key: str | None
    run_id: str
    created: float
    started: float
    ended: float

    @property
    def elapsed_s(self) -> float:
        return self.ended - self.started


def child_profile(state: dict) -> dict:
    """Read a command-line round back from its instance (not timed): the runs' span and where the time went."""
    import dagster as dg

    os.environ.update(cli_env(state, {}))
    with dg.DagsterInstance.get() as instance:
        runs = sorted(
            (
                _Run(
                    r.dagster_run.job_name, r.dagster_run.tags.get("dagster/partition"), r.dagster_run.run_id,
                    r.create_timestamp.timestamp(), r.start_time or 0.0, r.end_time or 0.0,
                )
                for r in instance.get_run_records()
            ),
            key=lambda r: r.created,
        )
        since = state.get("since", 0.0)  # the no-op re-run reads only its own runs
        runs = [r for r in runs if r.created >= since]
        report = {"launch_s": max(r.ended for r in runs) - min(r.created for r in runs)}
        if not state.get("noop"):
            report["profile"] = _profile(instance, runs)
    return report


def _step_durations(instance, run_id: str) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS/FAILURE of each step of a run."""
    starts, durations = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in starts:
            durations[entry.step_key] = entry.timestamp - starts[entry.step_key]
    return durations


def _profile(instance, runs: list[_Run]) -> dict:
    """Where the command-line round spent its time (seconds, summed over runs unless *_wall_s)."""
    import dagster as dg

    from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
    from sf_assets.engines.job import RESULT_FILE, WORKER_FILE
    from sf_assets.orchestration.partitions import split_pair_key

    by_job = {name: [r for r in runs if r.job_name == name] for name in ("studysets_job", "recordings_job", "sorting_job", "results_job")}
    started = min(r.created for r in runs)
    last_run = max(r.ended for r in by_job["recordings_job"] + by_job["sorting_job"])
    sorting_md = {k: plain_metadata(v[1]) for k, v in latest_partition_events(instance, dg.AssetKey("sorting")).items()}
    run_s = step_s = supervised_s = sorter_s = comparison_s = 0.0
    sorter_run_time: dict[str, float] = {}
    workers_by_sorter: dict[str, set[int]] = {}
    copies_by_sorter: dict[str, set[int]] = {}  # of them, copies of a warm worker: no compile
    for o in by_job["sorting_job"]:
        steps = _step_durations(instance, o.run_id)
        run_s += o.elapsed_s
        step_s += sum(steps.values())
        comparison_s += steps.get("sorting_comparison", 0.0)
        md = sorting_md[o.partition_key]
        supervised_s += md["elapsed_s"]
        sorter_name, _ = split_pair_key(o.partition_key)
        work_dir = Path(md["work_dir"])
        sort_elapsed = json.loads((work_dir / RESULT_FILE).read_text())["sort_elapsed_s"]
        worker_file = work_dir / WORKER_FILE
        if worker_file.exists():  # a warm worker's: which process ran it
            worker = json.loads(worker_file.read_text())
            workers_by_sorter.setdefault(sorter_name, set()).add(worker["pid"])
            if worker.get("copy_of"):
                copies_by_sorter.setdefault(sorter_name, set()).add(worker["pid"])
        sorter_s += sort_elapsed
        sorter_run_time[sorter_name] = sorter_run_time.get(sorter_name, 0.0) + sort_elapsed
    rec_run_s = sum(o.elapsed_s for o in by_job["recordings_job"])
    rec_step_s = sum(sum(_step_durations(instance, o.run_id).values()) for o in by_job["recordings_job"])
    studysets_s = by_job["studysets_job"][0].elapsed_s
    return {
        "studysets_run_s": studysets_s,
        "results_run_s": by_job["results_job"][-1].elapsed_s,
        # From the end of the studysets run to the last recording or sorting run.
        "runs_wall_s": last_run - started - studysets_s,
        "recording_runs_s": rec_run_s,
        "recording_steps_s": rec_step_s,
        "sorting_runs_s": run_s,
        "sorting_steps_s": step_s,
        "supervised_worker_s": supervised_s,
        "run_sorter_s": sorter_s,
        "comparison_steps_s": comparison_s,
        "run_sorter_s_by_sorter": sorter_run_time,
        # How many sort workers compiled each sorter (1 each is what sorter affinity aims at).
        "workers_by_sorter": {name: len(pids) for name, pids in workers_by_sorter.items()},
        "copies_by_sorter": {name: len(pids) for name, pids in copies_by_sorter.items()},
        "num_sortings": len(by_job["sorting_job"]),
        "num_recordings": len(by_job["recordings_job"]),
    }


def child_plain(state: dict) -> dict:
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.sorters import read_sorter_folder, run_sorter_jobs

    from sf_assets.core.campaign import Campaign
    from sf_assets.core.sorter_catalog import resolve_sorter
    from sf_assets.stores.data import load_recording, load_sorting_object
    from sf_assets.stores.inputs import load_config
    from sf_assets.stores.kachery import KacheryStore

    started = time.monotonic()
    store = KacheryStore(state["kachery_dir"])
    campaign = Campaign(*load_config(state["manifest"], state["spec"], store))
    recordings = {r.label: load_recording(r.recording_uri, store) for r in campaign.recordings()}
    truths = {
        r.label: load_sorting_object(r.sorting_true_uri, store, recordings[r.label].get_sampling_frequency())
        for r in campaign.recordings()
    }
    out = Path(state["round_dir"]) / "plain"
    jobs = []
    for sorter_spec, rec in campaign.jobs:
        jobs.append(
            {
                "sorter_name": resolve_sorter(sorter_spec.name).si_name,
                "recording": recordings[rec.label],
                "folder": str(out / sorter_spec.name / rec.study_name / rec.name),
                **dict(sorter_spec.params or {}),
            }
        )
    sorted_at = time.monotonic()
    run_sorter_jobs(jobs, engine="joblib", engine_kwargs={"n_jobs": state["workers"]})
    sort_wall_s = time.monotonic() - sorted_at
    accuracies = []
    run_time: dict[str, float] = {}
    for (sorter_spec, rec), job in zip(campaign.jobs, jobs):
        sorting = read_sorter_folder(job["folder"])
        log = json.loads((Path(job["folder"]) / "spikeinterface_log.json").read_text())
        run_time[sorter_spec.name] = run_time.get(sorter_spec.name, 0.0) + float(log["run_time"])
        comparison = compare_sorter_to_ground_truth(truths[rec.label], sorting, delta_time=1.0)
        accuracies.append(float(comparison.get_performance()["accuracy"].mean()))
    return {
        "launch_s": time.monotonic() - started,
        "sort_wall_s": sort_wall_s,
        "run_sorter_s_by_sorter": run_time,
        "mean_accuracy": statistics.mean(accuracies),
        "sorted": len(jobs),
    }


NUMBA_SITECUSTOMIZE = """\
# Written by benchmarks/overhead.py --numba-cache: numba functions default to cache=True,
# so a fresh process loads compiled code from NUMBA_CACHE_DIR instead of compiling again.
import numba

def _cached(decorator):
    def jit(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return decorator(*args, **kwargs)
    return jit

numba.jit, numba.njit = _cached(numba.jit), _cached(numba.njit)
"""


def child_warm(state: dict) -> dict:
    """Fill numba's on-disk cache: each sorter once on the first 10 s of the first recording."""
    from spikeinterface.sorters import run_sorter

    from sf_assets.core.campaign import Campaign
    from sf_assets.core.sorter_catalog import resolve_sorter
    from sf_assets.stores.data import load_recording
    from sf_assets.stores.inputs import load_config
    from sf_assets.stores.kachery import KacheryStore

    started = time.monotonic()
    store = KacheryStore(state["kachery_dir"])
    campaign = Campaign(*load_config(state["manifest"], state["spec"], store))
    first = campaign.recordings()[0]
    recording = load_recording(first.recording_uri, store)
    recording = recording.frame_slice(0, min(recording.get_num_samples(), int(10 * recording.get_sampling_frequency())))
    for sorter_spec in campaign.spec.sorters:
        folder = Path(state["round_dir"]) / sorter_spec.name
        run_sorter(resolve_sorter(sorter_spec.name).si_name, recording, folder=str(folder), **dict(sorter_spec.params or {}))
    return {"launch_s": time.monotonic() - started}


# -------------------------------------------------------------------- parent


def run_daemon(base: dict, round_dir: Path, env: dict, keep_running=None) -> dict:
    """A daemon-path round (``daemon_round.py``) run from this process; its processes are reaped after it."""
    report = daemon_round(base, round_dir, env, keep_running=keep_running)
    _reap_orphans()  # the round's sort service, reparented to this subreaper
    return report


def become_subreaper() -> None:
    """Have this process adopt the orphans of the rounds, so their CPU time is counted too.

    A round's process may leave descendants that outlive it by a moment: the
    fork server of sf-assets' slots (it exits when the launching process has),
    a pool's worker processes.  Linux reparents them to the nearest "child
    subreaper" instead of init; :func:`run_child` then reaps them.
    """
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _reap_orphans(grace_s: float = 60.0) -> float:
    """Wait for the round's adopted orphans to end; their CPU seconds (and their descendants')."""
    cpu_s, deadline = 0.0, time.monotonic() + grace_s
    while True:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return cpu_s
        if pid:
            cpu_s += usage.ru_utime + usage.ru_stime
        elif time.monotonic() > deadline:
            sys.exit(f"processes left by the round still run {grace_s:.0f} s after it ended")
        else:
            time.sleep(0.05)


def run_child(kind: str, state: dict, env: dict) -> tuple[float, float, dict]:
    """Run one round in a fresh process; return (wall s, CPU s of it and all its descendants, its report).

    Wall time ends when the round's process does (as a user sees the command
    end).  CPU seconds (user + system, from ``wait4``, its descendants'
    included, orphans too: :func:`become_subreaper`) hardly change when other
    work shares the machine; wall seconds do.
    """
    from harness.dagster_dev import stop_sort_services

    command_line = kind in ("sf-assets", "noop")
    if command_line:  # the command a user types; its runs are read back from the instance afterwards
        state = {**state, "noop": kind == "noop", "since": time.time()}
        records = Path(state["round_dir"]) / f"records-{kind}.json"
        records.unlink(missing_ok=True)  # -o refuses an existing file
        _dagster_home(Path(state["round_dir"]))
        command, child_env = cli_command(state, records), cli_env(state, env)
    state_file = Path(state["round_dir"]) / f"{kind}.state.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state))
    if not command_line:
        command, child_env = [sys.executable, __file__, "--child", kind, "--state", str(state_file)], env
    # The round's own sort service (short path: it holds a Unix socket), stopped when the round
    # ends so that its CPU time is counted and no warm worker serves the next round.
    service_dir = tempfile.mkdtemp(prefix="sfb-", dir="/tmp")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, env={**child_env, "SF_ASSETS_SERVICE_DIR": service_dir}, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.monotonic() - started
        stop_sort_services(Path(service_dir))
        cpu_s = usage.ru_utime + usage.ru_stime + _reap_orphans()
        shutil.rmtree(service_dir, ignore_errors=True)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{kind} round failed (exit {proc.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
    if not command_line:
        return wall_s, cpu_s, json.loads(stdout.strip().splitlines()[-1])
    (summary,) = [m for m in map(SUMMARY_LINE.match, stdout.splitlines()) if m]
    profiled = subprocess.run(
        [sys.executable, __file__, "--child", "profile", "--state", str(state_file)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(profiled.stdout.strip().splitlines()[-1])
    return wall_s, cpu_s, {**report, "sorted": int(summary["sorted"]), "cached": int(summary["cached"])}


def generate(root: Path, args) -> dict:
    from sf_assets.stores.kachery import KacheryStore
    from sf_assets.stores.synthetic import generate_studyset

    store = KacheryStore(root / "kachery")
    sorters = [s.strip() for s in args.sorters.split(",") if s.strip()]
    started = time.monotonic()
    generated = generate_studyset(
        store,
        root / "studyset",
        seed=0,
        num_study_sets=1,
        studies_per_set=1,
        recordings_per_study=args.recordings,
        num_channels=(args.channels,),
        duration_s=args.duration_s,
        sorters=sorters,
    )
    print(
        f"grid: {args.recordings} recordings x {args.channels} channels x {args.duration_s:g} s, "
        f"sorters {sorters}, {args.workers} workers, canary {'off' if not args.canary_s else f'{args.canary_s:g} s'} "
        f"(generated in {time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return {
        "manifest": str(generated.manifest_path),
        "spec": str(generated.spec_path),
        "kachery_dir": str(store.root_dir),
        "workers": args.workers,
        "canary_s": args.canary_s,
        "num_pairs": args.recordings * len(sorters),
        "num_recordings": args.recordings,
    }


def _fmt(seconds: float) -> str:
    return f"{seconds:7.1f} s"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        state = json.loads(Path(args.state).read_text())
        if args.child == "plain":
            report = child_plain(state)
        elif args.child == "warm":
            report = child_warm(state)
        else:
            report = child_profile(state)
        print(json.dumps(report))
        return 0

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="sf-assets-overhead-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KACHERY_CLOUD_DIR": str(root / "kachery-cloud"),
        "SF_ASSETS_HOME": str(root / "home"),
        "PYTHONWARNINGS": "ignore",
    }
    os.environ.update({k: env[k] for k in ("KACHERY_CLOUD_DIR", "SF_ASSETS_HOME")})
    try:
        base = generate(root, args)
        become_subreaper()
        if args.numba_cache:
            site = root / "numba-sitecustomize"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(NUMBA_SITECUSTOMIZE)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
            env["NUMBA_CACHE_DIR"] = str(root / "numba-cache")
            warm_s, _, _ = run_child("warm", {**base, "round_dir": str(root / "warm")}, env)
            print(f"numba cache on (experiment), warmed in {warm_s:.1f} s", flush=True)
        kinds = ("sf-assets", "plain", "daemon")
        walls: dict[str, list[float]] = {k: [] for k in kinds}
        cpus: dict[str, list[float]] = {"sf-assets": [], "plain": []}
        reports: dict[str, list[dict]] = {k: [] for k in kinds}
        last_a_dir = None
        for i in range(args.warmup):
            for kind in kinds:
                round_dir = root / f"warmup{i + 1}-{kind}"
                if kind == "daemon":
                    wall_s = run_daemon(base, round_dir, env)["sort_to_summary_s"]
                else:
                    wall_s, _, _ = run_child(kind, {**base, "round_dir": str(round_dir)}, env)
                print(f"warm-up {i + 1} {kind:9s}: wall {_fmt(wall_s)} (not counted)", flush=True)
        for i in range(args.rounds):
            # Which side goes first rotates (A B C, B C A, C A B, ...): whatever the machine does
            # between rounds then falls on no side more than on the others.
            for kind in kinds[i % 3 :] + kinds[: i % 3]:
                round_dir = root / f"round{i + 1}-{kind}"
                if kind == "daemon":
                    last = i == args.rounds - 1
                    report = run_daemon(base, round_dir, env, keep_running=new_sorter_latency if last else None)
                    walls[kind].append(report["sort_to_summary_s"])
                    reports[kind].append(report)
                    print(
                        f"round {i + 1} {kind:9s}: first sort to summary {_fmt(report['sort_to_summary_s'])} "
                        f"(request to first sort {report['start_latency_s']:.1f} s; dagster dev ready in "
                        f"{report['ready_s']:.1f} s, not counted)",
                        flush=True,
                    )
                    continue
                wall_s, cpu_s, report = run_child(kind, {**base, "round_dir": str(round_dir)}, env)
                walls[kind].append(wall_s)
                cpus[kind].append(cpu_s)
                reports[kind].append(report)
                if kind == "sf-assets":
                    last_a_dir = round_dir
                if kind == "plain":
                    extra = f"mean accuracy {report['mean_accuracy']:.2f}"
                else:
                    copies = report["profile"].get("copies_by_sorter", {})
                    compiled = ", ".join(
                        f"{n} x{c}" + (f" ({copies[n]} a copy)" if copies.get(n) else "")
                        for n, c in sorted(report["profile"]["workers_by_sorter"].items())
                    )
                    extra = f"{report['sorted']} sorted; workers per sorter: {compiled}"
                print(
                    f"round {i + 1} {kind:9s}: wall {_fmt(wall_s)}, CPU {_fmt(cpu_s)} (work {report['launch_s']:.1f} s, the rest "
                    f"{wall_s - report['launch_s']:.1f} s: interpreter, imports, teardown; {extra})",
                    flush=True,
                )
        noop_wall_s, _, noop = run_child("noop", {**base, "round_dir": str(last_a_dir)}, env)
        if noop["sorted"] != 0 or noop["cached"] != base["num_pairs"]:
            sys.exit(f"the no-op re-run sorted {noop['sorted']} and found {noop['cached']} cached of {base['num_pairs']}")

        # Each sf-assets round is paired with the plain round next to it, so slow drifts
        # in what else the machine runs cancel out of the ratio.
        ratio = statistics.mean(a / b for a, b in zip(walls["sf-assets"], walls["plain"]))
        daemon_ratio = statistics.mean(c / b for c, b in zip(walls["daemon"], walls["plain"]))
        start_latency_s = statistics.mean(r["start_latency_s"] for r in reports["daemon"])
        cpu_ratio = statistics.mean(a / b for a, b in zip(cpus["sf-assets"], cpus["plain"]))
        a, b = statistics.mean(walls["sf-assets"]), statistics.mean(walls["plain"])
        per_partition_s = (a - b) / base["num_pairs"]
        cpu_per_partition_s = (statistics.mean(cpus["sf-assets"]) - statistics.mean(cpus["plain"])) / base["num_pairs"]
        print()
        print(
            f"wall: sf-assets {_fmt(a)}, plain spikeinterface {_fmt(b)}, ratio {ratio:.2f} (mean of the rounds' ratios)"
        )
        print(
            f"CPU:  sf-assets {_fmt(statistics.mean(cpus['sf-assets']))}, plain spikeinterface "
            f"{_fmt(statistics.mean(cpus['plain']))}, ratio {cpu_ratio:.2f}"
        )
        print(
            f"orchestration overhead: {a - b:.1f} s wall in all, {per_partition_s:.1f} s wall and "
            f"{cpu_per_partition_s:.1f} s CPU per sorting partition"
        )
        print(
            f"no-op re-run (every sort a job-cache hit): {noop_wall_s:.1f} s wall, "
            f"{noop['launch_s']:.1f} s of it from its first run's submission to its last run's end"
        )
        print(
            f"daemon path: first sort to summary {_fmt(statistics.mean(walls['daemon']))}, ratio {daemon_ratio:.2f} "
            f"against the plain round beside it; request to first sort {start_latency_s:.1f} s, "
            f"request to summary {statistics.mean(r['request_to_summary_s'] for r in reports['daemon']):.1f} s"
        )
        print_profile(reports, walls["sf-assets"], args.workers)
        last_daemon = reports["daemon"][-1]
        print("\nthe last daemon round, from its event log:")
        print_timeline(last_daemon["timeline"], last_daemon["requested"], last_daemon["automation_ticks"])
        fresh = last_daemon["extra"]
        print(
            f"\nnew sorter: {fresh['sorter']} added to the spec ({fresh['pairs']} pairs) with dagster dev running: "
            f"{fresh['edit_to_summary_s']:.1f} s from the edit to a summary including it ({fresh['sensor_wait_s']:.1f} s "
            f"of it waiting for the studyset sensor's next tick, interval {fresh['sensor_interval_s']:g} s; the edit came "
            f"right after a tick: the longest wait)"
        )
        print(
            f"overhead_ratio_cli={ratio:.2f} overhead_ratio_daemon={daemon_ratio:.2f} "
            f"daemon_start_latency_s={start_latency_s:.1f} noop_rerun_s={noop_wall_s:.1f} "
            f"overhead_ratio={max(ratio, daemon_ratio):.2f}"
        )
    finally:
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def print_profile(reports: dict[str, list[dict]], walls: list[float], workers: int) -> None:
    """Mean of the sf-assets rounds' profiles, against the plain rounds' sorter times."""
    profiles = [r["profile"] for r in reports["sf-assets"]]

    def mean(key: str) -> float:
        return statistics.mean(p[key] for p in profiles)

    n_sort = profiles[0]["num_sortings"]
    n_rec = profiles[0]["num_recordings"]
    print("\nwhere the sf-assets rounds spend their time (mean of rounds):")
    outside = statistics.mean(w - r["launch_s"] for w, r in zip(walls, reports["sf-assets"]))
    print(f"  the command outside its runs           {outside:6.1f} s  (interpreter, imports, instance, teardown)")
    print(f"  studysets run                          {mean('studysets_run_s'):6.1f} s")
    busy = (mean("recording_runs_s") + mean("sorting_runs_s")) / workers
    print(
        f"  recording and sorting runs (wall)      {mean('runs_wall_s'):6.1f} s  [{busy:.1f} s of runs per worker; "
        f"the other {mean('runs_wall_s') - busy:.1f} s: pool start, imports, idle workers]"
    )
    print(
        f"    {n_rec} recording runs:  {mean('recording_runs_s'):6.1f} s in runs, {mean('recording_steps_s'):.1f} s in "
        f"steps (fetch + sha1 + ground-truth SNRs)"
    )
    print(
        f"    {n_sort} sorting runs:    {mean('sorting_runs_s'):6.1f} s in runs, {mean('sorting_steps_s'):.1f} s in steps, "
        f"{mean('supervised_worker_s'):.1f} s in sort workers, {mean('run_sorter_s'):.1f} s in run_sorter, "
        f"{mean('comparison_steps_s'):.1f} s comparing"
    )
    print(f"  results run                            {mean('results_run_s'):6.1f} s")
    run_overhead = (mean("sorting_runs_s") - mean("sorting_steps_s")) / n_sort
    worker_overhead = (mean("supervised_worker_s") - mean("run_sorter_s")) / n_sort
    print(
        f"  per sorting run: {run_overhead:.2f} s Dagster run overhead (run minus steps), "
        f"{worker_overhead:.2f} s in the sort worker around run_sorter (load + sha1, store; a new worker's start)"
    )
    sf_by_sorter = {k: statistics.mean(p["run_sorter_s_by_sorter"][k] for p in profiles) for k in profiles[0]["run_sorter_s_by_sorter"]}
    plain_by_sorter = {
        k: statistics.mean(r["run_sorter_s_by_sorter"][k] for r in reports["plain"])
        for k in reports["plain"][0]["run_sorter_s_by_sorter"]
    }
    for name in sf_by_sorter:
        print(
            f"  run_sorter time of {name}: {sf_by_sorter[name]:.1f} s summed in sf-assets ({workers} warm workers) "
            f"vs {plain_by_sorter.get(name, float('nan')):.1f} s in plain (joblib reuses {workers} processes)"
        )
    plain_sort = statistics.mean(r["sort_wall_s"] for r in reports["plain"])
    print(f"  plain: run_sorter_jobs wall {plain_sort:.1f} s; load + compare {statistics.mean(r['launch_s'] for r in reports['plain']) - plain_sort:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
