"""What sorting on Slurm costs sf-assets: time per sort beyond ``run_sorter``, memory on the submit host.

Starts the same private single-node Slurm cluster the tests use
(``harness/slurm_cluster.py``; needs root), declaring one CPU per slot
(``--allocations`` x ``--slots``), generates ``--sorts`` short recordings, and
runs ``sf-assets run-sortings --use-slurm`` on them as a user would, with
``-w`` equal to the slots (every slot busy), shared nodes (one node holds every
allocation) and the given allocation shape.  Meanwhile it samples the resident
memory of the launch and everything it started on the submit host (the
Dagster run processes, ``srun``); the processes inside the allocations
(``slurmstepd`` and the sort workers under it) are not its children, so they
are not counted, as they would run on other machines on a real cluster.

Per sort, from what the launch leaves behind:

* the run's time (``[sortings i/n] ...: ok (T s)`` on its output) minus the
  worker's ``run_sorter`` time (``result.json``): Dagster's run, the wait for an
  allocation, ``srun``, the worker's start, storing the result;
* which worker process sorted it, in which slot of which allocation
  (``slurm_step.json``): compiles per sorter per slot is the number of worker
  processes that ran a sorter in one slot (each compiles the sorter anew).

Last line: ``slurm_overhead_per_sort_s=A orchestrator_peak_rss_mb=B compiles_per_sorter_per_slot=C``
(A: mean over sorts; B: peak of the sum over the launch's processes;
C: mean over (sorter, slot)).  Also prints the peak RSS of one run process.

Run: ``make bench-slurm`` (64 sorts, 4 allocations x 8 slots; minutes, and
about 32 Python run processes' worth of memory) or
``.venv/bin/python benchmarks/slurm.py --sorts 8 --allocations 2 --slots 2``.
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


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """Peak RSS of a process tree (sum), and of its largest single process, every half second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_total_mb, self.peak_one_mb = pid, 0.0, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sizes = [rss_mb(pid) for pid in descendants(self.pid)]
            self.peak_total_mb = max(self.peak_total_mb, sum(sizes))
            self.peak_one_mb = max(self.peak_one_mb, max(sizes, default=0.0))
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


def per_sort(work_root: Path, elapsed_by_label: dict[str, float]) -> tuple[list[float], dict[tuple[str, str], set]]:
    """Overhead of each sort, and the worker processes per (sorter, slot)."""
    overheads: list[float] = []
    workers: dict[tuple[str, str], set] = defaultdict(set)
    for job_file in work_root.glob("*/*/job.json"):
        job = json.loads(job_file.read_text())
        result = json.loads((job_file.parent / "result.json").read_text())
        step = json.loads((job_file.parent / "slurm_step.json").read_text())
        overheads.append(elapsed_by_label[job["label"]] - result["sort_elapsed_s"])
        workers[(job["sorter_name"], step["slot"])].add((step["node"], step["worker_pid"]))
    return overheads, workers


def main(argv=None) -> int:
    args = parse_args(argv)
    from harness.slurm_cluster import CLUSTER_DIR_PREFIX, start_cluster, stop_cluster

    slots = args.allocations * args.slots
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sf-assets-bench-slurm-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX)), cpus=slots)
    try:
        home = work / "home"
        env = {
            **os.environ,
            "SLURM_CONF": str(cluster.conf_path),
            "SF_ASSETS_HOME": str(home),
            "DAGSTER_HOME": str(REPO),
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
              f"{args.allocations} allocations x {args.slots} slots, cluster {cluster.root}", flush=True)  # fmt: skip
        started = time.monotonic()
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
        overheads, workers = per_sort(home / "sorts", elapsed_by_label)
    finally:
        stop_cluster(cluster)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    overhead = statistics.mean(overheads)
    compiles = statistics.mean(len(pids) for pids in workers.values())
    print(f"wall {wall_s:.1f} s; {sum(1 for n in allocations.split() if n.startswith('sf-assets-allocation-'))} "
          f"allocations; overhead per sort {overhead:.2f} s (median {statistics.median(overheads):.2f}, "
          f"max {max(overheads):.2f}); peak RSS of one run process {sampler.peak_one_mb:.0f} MB")  # fmt: skip
    print(
        f"slurm_overhead_per_sort_s={overhead:.2f} orchestrator_peak_rss_mb={sampler.peak_total_mb:.0f} "
        f"compiles_per_sorter_per_slot={compiles:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
