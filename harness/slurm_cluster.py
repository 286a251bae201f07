"""A real single-node Slurm cluster on this machine, for the Slurm engine's tests.

The Slurm engine's promises (a step is cancelled with the Dagster run, the
timeout holds, steps share an allocation) are promises about Slurm itself, so
they are tested against real daemons: ``munged``, ``slurmctld`` and ``slurmd``
started here as root, with a slurm.conf, a munge key and all state in one
temporary folder, on free TCP ports so that nothing collides with a site
installation or with an earlier run.

Daemons left over by an earlier, killed test run are recognised by the
folder name (:data:`CLUSTER_DIR_PREFIX`) that appears in their command line
and are stopped before a new cluster starts; nothing else is touched.

Without the Debian packages the fixture installs them with apt-get when it
runs as root.  Anything that keeps the cluster from starting is a test
failure, never a skip: a skipped Slurm test would hide a broken engine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CLUSTER_DIR_PREFIX = "sf-assets-slurm-"
PARTITION = "debug"
# A second partition over the same node: what ``--slurm-partition`` is tested with.
OTHER_PARTITION = "other"
# The node declares at least this many CPUs whatever the machine has (``config_overrides``):
# slots are what the tests exercise, not the cores behind them, and the allocation tests
# hold two allocations of several slots each on one node.
MIN_CPUS = 8
OWNER_FILE = "owner.pid"
APT_PACKAGES = ("slurm-wlm", "munge")
NEEDED_COMMANDS = ("munged", "slurmctld", "slurmd", "srun", "salloc", "squeue", "scancel", "sinfo", "scontrol")
START_TIMEOUT_S = 30.0


class SlurmClusterError(RuntimeError):
    """The test cluster could not be installed, started or stopped."""


@dataclass
class SlurmCluster:
    """A running test cluster; ``env`` is what clients (srun, squeue) need."""

    root: Path
    conf_path: Path
    node_name: str
    partition: str
    cpus: int
    processes: dict[str, subprocess.Popen]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf_path)}

    def run(self, *args: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster; return its stdout."""
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=30)
        if check and proc.returncode != 0:
            raise SlurmClusterError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def job_ids(self) -> list[str]:
        """Jobs squeue lists (pending, running, completing)."""
        return self.run("squeue", "--noheader", "--format=%i").split()

    def step_ids(self) -> list[str]:
        """Job steps squeue lists, as ``JOB.STEP``."""
        return self.run("squeue", "--steps", "--noheader", "--format=%i").split()

    def wait_until_no_jobs(self, timeout_s: float) -> list[str]:
        """Poll squeue until it lists no job; returns what is left at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.job_ids()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmClusterError("/proc/meminfo has no MemTotal line")


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge with apt-get when missing and root; else explain."""
    missing = [name for name in NEEDED_COMMANDS if shutil.which(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmClusterError(
            f"the Slurm tests need {', '.join(missing)}: run them as root (the fixture then installs "
            f"them) or install them first: apt-get install -y {' '.join(APT_PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SlurmClusterError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    still = [name for name in NEEDED_COMMANDS if shutil.which(name) is None]
    if still:
        raise SlurmClusterError(f"after apt-get install {' '.join(APT_PACKAGES)}, still missing: {', '.join(still)}")


def _pid_mentions(pid: int, marker: str) -> bool:
    """Does process ``pid`` name ``marker`` in its command line or environment?"""
    for name in ("cmdline", "environ"):
        try:
            if marker.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            return False
    return False


def _our_processes(root: Path) -> list[int]:
    """Processes started for the cluster in ``root``: its daemons and their job-step daemons.

    The daemons carry the folder in their command line; slurmstepd inherits
    slurmd's environment, which holds ``SLURM_CONF=<root>/slurm.conf``.
    """
    marker = str(root)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _pid_mentions(int(entry.name), marker):
            pids.append(int(entry.name))
    return pids


def _terminate(pids: list[int], grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
            time.sleep(0.1)
        if not alive:
            return
        pids = alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _owner_alive(root: Path) -> bool:
    """Is the test process that started the cluster in ``root`` still running?"""
    try:
        pid = int((root / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def stop_stale_clusters(tmp_root: Path | None = None) -> list[Path]:
    """Stop daemons of earlier test clusters whose test process is gone; remove their folders.

    A cluster whose owner still runs belongs to a concurrent test session and
    is left alone.
    """
    tmp_root = Path(tmp_root or tempfile.gettempdir())
    stale = [root for root in sorted(tmp_root.glob(f"{CLUSTER_DIR_PREFIX}*")) if not _owner_alive(root)]
    for root in stale:
        _terminate(_our_processes(root), grace_s=5.0)
        shutil.rmtree(root, ignore_errors=True)
    return stale


def write_slurm_conf(root: Path, node_name: str, cpus: int, memory_mb: int) -> Path:
    """A minimal single-node configuration: no cgroups (containers lack them), no accounting.

    Finished jobs are logged with ``jobcomp/filetxt``, which ``sacct --completion`` reads
    (there is no slurmdbd here).
    """
    conf = f"""\
# Written by harness/slurm_cluster.py for one test session.
ClusterName=sfassetstest
SlurmctldHost={node_name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
SlurmdParameters=config_overrides
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node_name} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node_name} Default=YES MaxTime=INFINITE State=UP
PartitionName={OTHER_PARTITION} Nodes={node_name} Default=NO MaxTime=INFINITE State=UP
"""
    (root / "plugstack.conf").write_text("")
    path = root / "slurm.conf"
    path.write_text(conf)
    return path


def _start(name: str, argv: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(root / f"{name}.out", "wb")
    try:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    finally:
        log.close()


def _log_tail(root: Path, name: str) -> str:
    texts = []
    for suffix in (".out", ".log"):
        path = root / f"{name}{suffix}"
        if path.exists():
            texts.append(path.read_text(errors="replace")[-1500:])
    return "\n".join(texts)


def start_cluster(root: Path, cpus: int | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd for a cluster kept in ``root``; wait until the node is idle.

    ``cpus``: how many CPUs the node declares (default: the machine's, at least
    :data:`MIN_CPUS`); ``make bench-slurm`` declares one per slot it runs.
    """
    root.chmod(0o711)  # munged wants its socket's folder searchable by everyone
    (root / OWNER_FILE).write_text(str(os.getpid()))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node_name = socket.gethostname().split(".")[0]
    cpus = cpus or max(MIN_CPUS, os.cpu_count() or 1)
    conf_path = write_slurm_conf(root, node_name, cpus, _memory_mb())
    env = {**os.environ, "SLURM_CONF": str(conf_path)}
    cluster = SlurmCluster(root, conf_path, node_name, PARTITION, cpus, {})
    daemons = [
        (
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={root}/munge.socket",
                f"--pid-file={root}/munged.pid",
                f"--log-file={root}/munged.log",
                f"--seed-file={root}/munged.seed",
            ],
        ),
        ("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf_path)]),
        ("slurmd", ["slurmd", "-D", "-N", node_name, "-f", str(conf_path)]),
    ]
    try:
        for name, argv in daemons:
            cluster.processes[name] = _start(name, argv, root, env)
            if name == "munged":
                _wait_for(lambda: (root / "munge.socket").exists(), cluster, "munged to create its socket")
        _wait_for(lambda: _node_state(cluster) == "idle", cluster, f"node {node_name} to be idle in sinfo")
    except BaseException:
        stop_cluster(cluster, remove=False)
        raise
    return cluster


def _node_state(cluster: SlurmCluster) -> str:
    proc = subprocess.run(
        ["sinfo", "--noheader", "--format=%T", f"--nodes={cluster.node_name}"],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=30,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _wait_for(ready, cluster: SlurmCluster, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise SlurmClusterError(
                    f"{name} exited with code {proc.returncode} while waiting for {what}; "
                    f"its log ({cluster.root}):\n{_log_tail(cluster.root, name)}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}\n{_log_tail(cluster.root, name)}" for name in cluster.processes)
            raise SlurmClusterError(f"timed out after {START_TIMEOUT_S:g} s waiting for {what}\n{logs}")
        time.sleep(0.2)


def stop_cluster(cluster: SlurmCluster, remove: bool = True) -> None:
    """Cancel every job, stop the daemons this cluster started (and their step daemons), remove the folder."""
    slurmctld = cluster.processes.get("slurmctld")
    if slurmctld is not None and slurmctld.poll() is None:
        subprocess.run(
            ["scancel", "--full", f"--partition={cluster.partition}"], env=cluster.env, capture_output=True, timeout=30
        )
        cluster.wait_until_no_jobs(timeout_s=15.0)
    for name in ("slurmd", "slurmctld", "munged"):
        proc = cluster.processes.get(name)
        if proc is not None and proc.poll() is None:
            _terminate([proc.pid], grace_s=10.0)
            proc.wait()
    _terminate(_our_processes(cluster.root), grace_s=5.0)
    if remove:
        shutil.rmtree(cluster.root, ignore_errors=True)
