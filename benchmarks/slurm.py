"""What sorting on Slurm costs sf-assets: time per sort beyond ``run_sorter``, memory on the submit host.

Starts the same private single-node Slurm cluster the tests use
(``harness/slurm_cluster.py``; needs root), its node declaring one CPU
per slot (``--allocations`` x ``--slots``; slurmd is told to advertise them
whatever the machine has, so the slots are real but their CPUs are shared),
generates ``--sorts`` short recordings, and runs ``sf-assets run-sortings
--use-slurm`` on them as a user would, with ``-w`` equal to the slots (every
slot busy), shared nodes (one node holds every allocation) and the given
allocation shape.  The launch gets a sort-service folder of its own, so the
host's sort service that forks its Dagster run processes is its child.
Meanwhile it samples the memory of the launch and everything it started on
the submit host (the host's sort service, its fork server and the Dagster run
processes); the allocations' holders, sort services and warm workers are
started by Slurm (slurmd), not by the launch, so they are not counted, as
they would run on other machines on a real cluster.

Per sort, from what the launch leaves behind:

* the run's time (``[sortings i/n] ...: ok (T s)`` on its output) minus the
  worker's ``run_sorter`` time (``result.json``): Dagster's run, the wait for
  an allocation slot, the trip to the allocation's sort service, the warm
  worker's start (paid once per slot, by its first sort), storing the result;
* which worker process sorted it, in which slot of which allocation's service
  (``slurm_slot.json``): compiles per sorter per slot counts the sorts whose
  worker compiled numba code of the sorter (``result.json``; not one that
  loaded it from the JIT cache, nor one forked from a warm worker or a
  warmed template), plus each allocation's warm-up that compiled
  (``services/<job id>/warm-up.json``, :mod:`sf_assets.engines.warm_up`).

Last line: ``slurm_overhead_per_sort_s=A orchestrator_peak_rss_mb=B compiles_per_sorter_per_slot=C``
(A: mean over sorts; B: peak of the sum of RSS over the launch's processes,
which counts pages forked processes share once per process; C: those
compiles over the (sorter, slot) pairs that sorted).  Also prints the peak proportional set size (shared pages
split between the processes sharing them) of the same processes, and the
peak RSS and PSS of one Dagster run process.

Run: ``make bench-slurm`` (64 sorts, 4 allocations x 8 slots; minutes) or
``.venv/bin/python benchmarks/slurm.py --sorts 16 --allocations 2 --slots 4``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SORTED_LINE = re.compile(r"^\[sortings \d+/\d+\] (?P<label>\S+): ok \((?P<elapsed>[\d.]+) s\)$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sorts", type=int, default=64, help="sorts, one recording each (default 64)")
    p.add_argument("--allocations", type=int, default=4, help="M, allocations at a time (default 4)")
    p.add_argument("--slots", type=int, default=8, help="N, sorts per allocation (default 8)")
    p.add_argument("--sorter", default="Simple", help="catalog name of the sorter (default Simple)")
    p.add_argument("--duration-s", type=float, default=2.0, help="seconds per recording (default 2)")
    p.add_argument("--work-dir", help="keep everything here (default: a temporary folder, removed at the end)")
    return p.parse_args(argv)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children[int(stat[stat.rindex(")") + 2 :].split()[1])].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def memory_mb(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, USS: its private pages) of one process in MB; zeros once it is gone."""
    sizes = {"Rss": 0.0, "Pss": 0.0, "Private_Clean": 0.0, "Private_Dirty": 0.0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in sizes:
                sizes[key] = int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return sizes["Rss"], sizes["Pss"], sizes["Private_Clean"] + sizes["Private_Dirty"]


def is_run_process(pid: int) -> bool:
    """A Dagster run process: forked by the host sort service's fork server (so it carries its command line)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        return all(b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes() for p in (pid, parent))
    except (OSError, ValueError):
        return False


class MemorySampler(threading.Thread):
    """Peak RSS and PSS of a process tree (sums), and of its largest run process, every half second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_total_mb, self.peak_total_pss_mb = 0.0, 0.0
        self.peak_run_mb, self.peak_run_pss_mb, self.peak_run_uss_mb, self.peak_runs = 0.0, 0.0, 0.0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = descendants(self.pid)
            sizes = {pid: memory_mb(pid) for pid in pids}
            self.peak_total_mb = max(self.peak_total_mb, sum(rss for rss, _, _ in sizes.values()))
            self.peak_total_pss_mb = max(self.peak_total_pss_mb, sum(pss for _, pss, _ in sizes.values()))
            runs = [sizes[pid] for pid in pids if sizes[pid][0] > 0 and is_run_process(pid)]  # not ended ones
            self.peak_runs = max(self.peak_runs, len(runs))
            self.peak_run_mb = max([self.peak_run_mb, *(rss for rss, _, _ in runs)])
            self.peak_run_pss_mb = max([self.peak_run_pss_mb, *(pss for _, pss, _ in runs)])
            self.peak_run_uss_mb = max([self.peak_run_uss_mb, *(uss for _, _, uss in runs)])
            time.sleep(0.5)


def generate(home: Path, args: argparse.Namespace, env: dict[str, str]) -> Path:
    """The recordings (one study), and a spec sorting all of them with the sorter; returns the spec."""
    code = (
        "import sys; from pathlib import Path\n"
        "from sf_assets.stores.synthetic import generate_studyset\n"
        "from sf_assets.stores.kachery import KacheryStore\n"
        "from sf_assets.core.settings import load_settings\n"
        "g = generate_studyset(KacheryStore(load_settings().kachery_dir), Path(sys.argv[1]), seed=3,"
        " num_study_sets=1, studies_per_set=1, recordings_per_study=int(sys.argv[2]), num_channels=(4,),"
        " duration_s=float(sys.argv[3]), sorters=(sys.argv[4],))\n"
        "print(g.spec_path)\n"
    )
    argv = [sys.executable, "-c", code, str(home / "studyset"), str(args.sorts), str(args.duration_s), args.sorter]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def final_tries(work_root: Path) -> list[Path]:
    """The ``job.json`` of each sort's last try: an attempt whose allocation was lost ran again in ``retry-N/``."""
    from sf_assets.engines.work_dirs import RETRY_PREFIX

    def superseded(folder: Path) -> bool:
        return any(child.is_dir() and child.name.startswith(RETRY_PREFIX) for child in folder.iterdir())

    return [job for job in work_root.rglob("job.json") if not superseded(job.parent)]


def per_sort(
    work_root: Path, elapsed_by_label: dict[str, float]
) -> tuple[dict[str, list[float]], dict[tuple[str, str], set], dict[str, list[float]]]:
    """Overhead of each sort (by its worker: ``new``, a fresh ``copy`` of a warm one, or ``warm`` from an
    earlier sort in its slot), the workers per (sorter, slot), and the placement's steps (seconds
    waiting for a claim, reaching the service, until a slot took it)."""
    from sf_assets.engines.slurm_service import SLOT_FILE

    overheads: dict[str, list[float]] = {"new": [], "copy": [], "warm": []}
    workers: dict[tuple[str, str], list] = defaultdict(list)
    placing: dict[str, list[float]] = defaultdict(list)
    for job_file in final_tries(work_root):
        job = json.loads(job_file.read_text())
        result = json.loads((job_file.parent / "result.json").read_text())
        placed = json.loads((job_file.parent / SLOT_FILE).read_text())
        worker = "copy" if placed.get("copy_of") else "warm" if placed["warm"] else "new"
        overheads[worker].append(elapsed_by_label[job["label"]] - result["sort_elapsed_s"])
        # What the sort compiled, as the worker counted it; without a JIT cache, a worker that was not warm.
        jit = result.get("jit_cache")
        compiled = jit["compiled"] > 0 if jit is not None else not placed["warm"]
        workers[(job["sorter_name"], placed["slot"])].append({**placed, "compiled": compiled})
        placing["claim"].append(placed["claimed_at"] - placed["requested_at"])
        placing["connect"].append(placed["connected_at"] - placed["claimed_at"])
        placing["slot"].append(placed["started_at"] - placed["connected_at"])
    return overheads, workers, placing


def warm_ups(work_root: Path, since: float) -> list[dict]:
    """Each allocation's warm-up report entries (``services/<job id>/warm-up.json``) written since ``since``."""
    from sf_assets.engines.slurm_pool import POOL_FOLDER
    from sf_assets.engines.slurm_service import SERVICES
    from sf_assets.engines.warm_up import REPORT_FILE

    entries = []
    for report in (work_root / POOL_FOLDER).glob(f"*/{SERVICES}/*/{REPORT_FILE}"):
        if report.stat().st_mtime >= since:  # not an earlier campaign's in a kept work folder
            entries += json.loads(report.read_text())["sorters"]
    return entries


def instance_home(work: Path, slots: int) -> Path:
    """A DAGSTER_HOME with the checkout's dagster.yaml, but as many runs in flight as there are slots.

    Each sort in flight is a Dagster run; the checkout's ``max_concurrent_runs``
    (sized for this host's own cores) would otherwise keep most slots idle.
    """
    home = work / "dagster-home"
    home.mkdir(parents=True, exist_ok=True)
    text = (REPO / "dagster.yaml").read_text()
    text, count = re.subn(r"max_concurrent_runs: \d+", f"max_concurrent_runs: {slots}", text)
    if count != 1:
        raise SystemExit(f"{REPO / 'dagster.yaml'}: expected one max_concurrent_runs line, found {count}")
    (home / "dagster.yaml").write_text(text)
    return home


def breakdown(work: Path, elapsed_by_label: dict[str, float]) -> tuple[float, float]:
    """Mean seconds per sort (run time minus the sort's report span; report span minus ``run_sorter``).

    The first is Dagster's run and step, the slot claim and the trip to the
    allocation's service; the second the worker's own loading and storing
    (and, for a slot's first sort, the worker's start).
    """
    outside, inside = [], []
    sort_s = {}
    for job_file in final_tries(work / "home" / "sorts"):
        job = json.loads(job_file.read_text())
        sort_s[job["label"]] = json.loads((job_file.parent / "result.json").read_text())["sort_elapsed_s"]
    for record in json.loads((work / "records.json").read_text()):
        label = f"{record['sorterName']}/{record['studyName']}/{record['recordingName']}"
        span = record["endTime"] - record["startTime"]
        outside.append(elapsed_by_label[label] - span)
        inside.append(span - sort_s[label])
    return statistics.mean(outside), statistics.mean(inside)


def stop_host_services(service_dir: Path) -> None:
    """End the sort service the launch started on this host (it would idle for minutes)."""
    for info in service_dir.glob("*/service.json"):
        try:
            os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


def main(argv=None) -> int:
    args = parse_args(argv)
    from harness.slurm_cluster import CLUSTER_DIR_PREFIX, start_cluster, stop_cluster

    slots = args.allocations * args.slots
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sf-assets-bench-slurm-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX)), cpus=slots)
    service_dir = Path(tempfile.mkdtemp(prefix="sfb-", dir="/tmp"))  # short: it holds a Unix socket
    try:
        home = work / "home"
        env = {
            "SF_ASSETS_SERVICE_DIR": str(service_dir),
            **os.environ,
            "SLURM_CONF": str(cluster.conf_path),
            "SF_ASSETS_HOME": str(home),
            "DAGSTER_HOME": str(instance_home(work, slots)),
            "SF_ASSETS_DAGSTER_DIR": str(home / "dagster"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        spec = generate(home, args, env)
        command = [
            sys.executable, "-m", "sf_assets.cli", "run-sortings", "-l", str(spec), "-o", str(work / "records.json"),
            "-w", str(slots), "--no-job-cache", "--use-slurm", "--slurm-accept-shared-nodes",
            "--slurm-jobs-per-allocation", str(args.slots), "--slurm-max-simultaneous-allocations", str(args.allocations),
        ]  # fmt: skip
        print(f"{args.sorts} {args.sorter} sorts of {args.duration_s:g} s recordings, "
              f"{args.allocations} allocations x {args.slots} slots, cluster {cluster.root} "
              f"(its node advertises {slots} CPUs; this machine has {os.cpu_count()})", flush=True)  # fmt: skip
        started, launched_at = time.monotonic(), time.time()
        launch = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        sampler = MemorySampler(launch.pid)
        sampler.start()
        elapsed_by_label: dict[str, float] = {}
        for line in launch.stdout:
            print(line, end="", flush=True)
            match = SORTED_LINE.match(line.strip())
            if match:
                elapsed_by_label[match["label"]] = float(match["elapsed"])
        launch.wait()
        sampler.stop.set()
        sampler.join()
        wall_s = time.monotonic() - started
        if launch.returncode != 0 or len(elapsed_by_label) != args.sorts:
            print(f"the launch exited {launch.returncode} with {len(elapsed_by_label)}/{args.sorts} sorts ok")
            return 1
        allocations = cluster.run("sacct", "--completion", "--noheader", "--parsable2", "--format=JobName")
        overheads, workers, placing = per_sort(home / "sorts", elapsed_by_label)
        outside_s, inside_s = breakdown(work, elapsed_by_label)
        warmed = warm_ups(home / "sorts", since=launched_at)
    finally:
        stop_host_services(service_dir)
        stop_cluster(cluster)
        shutil.rmtree(service_dir, ignore_errors=True)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    from sf_assets.engines.warm_up import SKIPPED

    by_worker, overheads = overheads, [value for values in overheads.values() for value in values]
    overhead = statistics.mean(overheads)
    # The allocations' warm-ups compile too (once per allocation, not per slot): counted with the sorts'.
    warm_up_compiles = sum(1 for entry in warmed if entry.get("compiled"))
    compiles = (sum(p["compiled"] for placed in workers.values() for p in placed) + warm_up_compiles) / len(workers)
    loaded = sum(1 for placed in workers.values() for p in placed if not p["warm"] and not p["compiled"])
    processes = statistics.mean(len({p["worker_pid"] for p in placed}) for placed in workers.values())
    copies = sum(1 for placed in workers.values() for p in placed if p.get("copy_of"))
    names = allocations.split()
    print(f"wall {wall_s:.1f} s; {sum(1 for n in names if n.startswith('sf-assets-allocation-'))} allocations, "
          f"{sum(1 for n in names if not n.startswith('sf-assets-allocation-'))} other Slurm jobs; "
          f"overhead per sort {overhead:.2f} s (median {statistics.median(overheads):.2f}, "
          f"max {max(overheads):.2f}); {len(workers)} (sorter, slot) pairs, {processes:.2f} worker processes "
          f"each; {copies} sorts on a copy of a warm worker; {loaded} new workers loaded the sorter from "
          "the JIT cache instead of compiling it")  # fmt: skip
    if warmed:
        print(f"  {len(warmed)} allocation warm-ups (a synthetic sort per sorter in each service's template): "
              f"{warm_up_compiles} compiled, {sum(1 for e in warmed if e.get('loaded') and not e.get('compiled'))} "
              f"loaded the JIT cache, {sum(1 for e in warmed if e.get('error') == SKIPPED)} left to the JIT cache, "
              f"{sum(1 for e in warmed if e.get('error') not in (None, SKIPPED))} failed; "
              f"{statistics.mean(e.get('seconds', 0.0) for e in warmed):.2f} s each")  # fmt: skip
    print(f"  of which {outside_s:.2f} s outside the service's report (Dagster's run and step, the slot, the trip "
          f"to the allocation) and {inside_s:.2f} s inside it beyond run_sorter "
          "(the worker loading, storing)")  # fmt: skip
    print("  placing a sort (mean s): " + ", ".join(
        f"{name} {statistics.mean(values):.3f}" for name, values in (
            ("claim (a free slot, or a new allocation to start)", placing["claim"]),
            ("reaching the allocation's service", placing["connect"]),
            ("until its slot took it", placing["slot"]),
        )
    ))  # fmt: skip
    for worker, name in (
        ("new", "on a new worker (its slot's first sort)"),
        # Made once the allocation's first sort of the sorter has compiled it: these waited for that sort.
        ("copy", "on a fresh copy of a warm worker"),
        ("warm", "on a worker that had sorted before in its slot"),
    ):
        if by_worker[worker]:
            print(f"  {len(by_worker[worker])} sorts {name}: overhead mean {statistics.mean(by_worker[worker]):.2f} s, "
                  f"median {statistics.median(by_worker[worker]):.2f} s")  # fmt: skip
    print(f"submit host: peak RSS sum {sampler.peak_total_mb:.0f} MB, peak PSS sum {sampler.peak_total_pss_mb:.0f} MB; "
          f"up to {sampler.peak_runs} run processes at once; one run process: peak RSS {sampler.peak_run_mb:.0f} MB, "
          f"PSS {sampler.peak_run_pss_mb:.0f} MB, private (USS) {sampler.peak_run_uss_mb:.0f} MB")  # fmt: skip
    print(
        f"slurm_overhead_per_sort_s={overhead:.2f} orchestrator_peak_rss_mb={sampler.peak_total_mb:.0f} "
        f"compiles_per_sorter_per_slot={compiles:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
