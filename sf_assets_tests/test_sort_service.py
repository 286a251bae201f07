"""The host's sort service: warm workers, affinity, leases, timeouts and crashes, for real.

Each test gets a service of its own (a private folder and a short idle time),
started on demand by the first sort exactly as a sorting step starts it.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sf_assets.core.sorter_catalog import pinned_seeds
from sf_assets.engines.engine import EngineSettings, run_sort
from sf_assets.engines.job import SortJob, SortReport
from sf_assets.engines.service_address import ServiceFolderError, ServiceSettings, service_folder
from sf_assets.engines.service_client import connect, service_status
from sf_assets_tests.sort_jobs import sort_job


@pytest.fixture
def settings(tmp_path):
    base = tempfile.mkdtemp(prefix="sfs-", dir="/tmp")  # a socket path must stay short
    yield EngineSettings(work_root=str(tmp_path / "sorts"), service_dir=base, service_slots=2, service_idle_exit_s=30)
    status = service_status(EngineSettings(work_root="", service_dir=base, service_slots=2, service_idle_exit_s=30).service())
    if status:
        os.kill(status["pid"], signal.SIGTERM)


def _job(synthetic_studyset, tmp_path: Path, name: str, sorter=("MountainSort5", "mountainsort5"), **changes) -> SortJob:
    return sort_job(synthetic_studyset, tmp_path / name, sorter, **{"canary_first_n_s": 0.0, **changes})


def _sort(job: SortJob, settings: EngineSettings) -> tuple[dict, SortReport]:
    events = list(run_sort(job, settings))
    return events[0], events[-1]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_two_sorts_of_one_sorter_reuse_one_warm_worker(synthetic_studyset, tmp_path, settings):
    first_slot, first = _sort(_job(synthetic_studyset, tmp_path, "first"), settings)
    # The slot is free by the time its client has the outcome, so a next sort sent at once finds it.
    assert not any(s["busy"] for s in service_status(settings.service())["slots"])
    second_slot, second = _sort(_job(synthetic_studyset, tmp_path, "second"), settings)
    assert not first.errored and not second.errored
    assert first_slot["warm"] is False and second_slot["warm"] is True
    assert first_slot["worker_pid"] == second_slot["worker_pid"], "the second sort ran in the first sort's worker"
    status = service_status(settings.service())
    [slot] = [s for s in status["slots"] if s["worker_pid"] == first_slot["worker_pid"]]
    assert slot["sorters"] == ["mountainsort5"] and slot["jobs"] == 2 and not slot["busy"]
    # Each job has its own console and its own CPU time, not the worker's running total.
    line = "[sf-assets worker] sorting "
    assert Path(first.console_path).read_text().count(line) == Path(second.console_path).read_text().count(line) == 1
    assert 0 < second.cpu_time_s < second.elapsed_s * (os.cpu_count() or 1) + 1


def test_a_sort_goes_to_the_slot_that_has_its_sorter_compiled(synthetic_studyset, tmp_path, settings):
    """Sorter affinity across clients: mountainsort5 and simple each warm on their own slot."""
    ms5 = ("MountainSort5", "mountainsort5")
    simple = ("Simple", "simple")
    a, _ = _sort(_job(synthetic_studyset, tmp_path, "a", ms5), settings)
    # While mountainsort5's slot is busy, simple goes to the other slot.
    results: dict[str, tuple] = {}
    busy = threading.Thread(target=lambda: results.update(b=_sort(_job(synthetic_studyset, tmp_path, "b", ms5), settings)))
    busy.start()
    c, _ = _sort(_job(synthetic_studyset, tmp_path, "c", simple), settings)
    busy.join()
    d, _ = _sort(_job(synthetic_studyset, tmp_path, "d", simple), settings)
    e, _ = _sort(_job(synthetic_studyset, tmp_path, "e", ms5), settings)
    assert results["b"][0]["worker_pid"] == a["worker_pid"] == e["worker_pid"]
    assert c["worker_pid"] == d["worker_pid"] != a["worker_pid"]
    assert d["warm"] and e["warm"]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_an_idle_slot_sorts_on_a_copy_of_the_warm_worker_made_between_its_sorts(synthetic_studyset, tmp_path, settings):
    """Rule 4 of core.dispatch: the other slot does not compile mountainsort5 again, nor wait for
    the warm slot to run both sorts; it gets a copy of the warm worker once its current sort ends,
    and the copy sorts exactly as the worker it copies."""
    seeded = {"params": pinned_seeds("MountainSort5")}  # as every sorting step sorts it: deterministic
    a, _ = _sort(_job(synthetic_studyset, tmp_path, "a", **seeded), settings)  # compiles mountainsort5
    results: dict[str, tuple] = {}
    busy = threading.Thread(
        target=lambda: results.update(b=_sort(_job(synthetic_studyset, tmp_path, "b", **seeded), settings))
    )
    busy.start()
    deadline = time.monotonic() + 30
    while not any(s["busy"] for s in service_status(settings.service())["slots"]):
        assert time.monotonic() < deadline, "b never started"
        time.sleep(0.02)
    c, c_report = _sort(_job(synthetic_studyset, tmp_path, "c", **seeded), settings)
    worker_of_c_alive = Path(f"/proc/{c['worker_pid']}").exists()
    template_of_c = _ppid(c["worker_pid"]) if worker_of_c_alive else None
    busy.join()
    b, b_report = results["b"]
    assert b["worker_pid"] == a["worker_pid"] and b["warm"]
    assert c["copy_of"] == a["worker_pid"] != c["worker_pid"] and c["warm"] is True
    assert template_of_c == _ppid(a["worker_pid"]), "the copy is the template's to reap, like the workers it forks"
    assert not b_report.errored and not c_report.errored
    assert c_report.sorting_object_uri == b_report.sorting_object_uri, "the same sorting, byte for byte"
    slots = {s["worker_pid"]: s for s in service_status(settings.service())["slots"]}
    assert slots[c["worker_pid"]]["sorters"] == ["mountainsort5"] and slots[c["worker_pid"]]["jobs"] == 1


def test_a_sorter_the_jit_cache_holds_starts_on_a_new_worker_while_its_warm_one_is_busy(
    synthetic_studyset, tmp_path, settings
):
    """Rule 3 of core.dispatch with a JIT cache: once a worker has sorted simple with the cache, the
    next simple sort waits neither for the busy warm worker nor for a copy of it; a new worker starts
    and loads simple's code instead of compiling it."""
    simple, cache = ("Simple", "simple"), {"jit_cache_dir": str(tmp_path / "jit")}
    a, _ = _sort(_job(synthetic_studyset, tmp_path, "a", simple, **cache), settings)  # compiles simple, marks it
    b_events = run_sort(_job(synthetic_studyset, tmp_path, "b", simple, **cache), settings)
    b = next(b_events)
    assert b["worker_pid"] == a["worker_pid"]
    os.kill(b["worker_pid"], signal.SIGSTOP)  # the warm slot stays busy, however short its sort
    results: dict[str, tuple] = {}
    try:
        sort_c = threading.Thread(
            target=lambda: results.update(c=_sort(_job(synthetic_studyset, tmp_path, "c", simple, **cache), settings)),
            daemon=True,
        )
        sort_c.start()
        sort_c.join(60)
        assert "c" in results, "c waited for the busy warm worker"
    finally:
        os.kill(b["worker_pid"], signal.SIGCONT)
    b_report = list(b_events)[-1]
    c, c_report = results["c"]
    assert c["copy_of"] is None and c["warm"] is False and c["worker_pid"] != a["worker_pid"]
    assert c_report.details["jit_cache"]["compiled"] == 0 and c_report.details["jit_cache"]["loaded"] > 0
    assert not b_report.errored and not c_report.errored


def test_a_launch_runs_no_more_sorts_at_once_than_its_limit(synthetic_studyset, tmp_path, settings):
    """``sorts_at_once`` (``-w``): two free slots, each warm for one of two sorters, yet a
    launch limited to one sort at once runs its second sort after its first."""
    import dataclasses

    sorters = (("Simple", "simple"), ("MountainSort5", "mountainsort5"))
    spans: dict[str, tuple[float, float]] = {}

    def sort(name: str, sorter, launch: str, engine: EngineSettings) -> None:
        events = run_sort(_job(synthetic_studyset, tmp_path, name, sorter), engine, launch=launch)
        next(events)  # a slot took it
        started = time.monotonic()
        for _event in events:
            pass
        spans[name] = (started, time.monotonic())

    def both(launch: str, engine: EngineSettings) -> list[tuple[float, float]]:
        spans.clear()
        threads = [threading.Thread(target=sort, args=(f"{launch}-{i}", sorters[i], launch, engine)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(spans.values())

    first, second = both("unlimited", settings)
    assert second[0] < first[1], f"no limit: the two sorters' sorts share the two slots: {spans}"
    first, second = both("one-at-a-time", dataclasses.replace(settings, sorts_at_once=1))
    assert second[0] >= first[1] - 0.2, f"the launch's two sorts overlapped: {spans}"


def test_a_sort_on_its_way_is_forgotten_when_its_run_ends_without_it(synthetic_studyset, tmp_path, settings):
    """A launched sorting run announces its sort (``sorter``): idle slots may wait for it (core.dispatch),
    but only while the run lives.  Here the run ends at once (its instance reference is not
    one), as a job-cache hit's run ends without sorting; the next sort the service places forgets it,
    instead of letting slots wait for it until its time is up."""
    from sf_assets.engines.service_client import call_service
    from sf_assets.engines.sort_service import EXPECT_SORT_S

    began = time.monotonic()
    answer = call_service(
        settings.service(), "launch_run", run_id="never-sorts", instance_ref="not a reference",
        environ=dict(os.environ), cwd=str(tmp_path), lease="", sorter="simple",
    )
    assert answer["launched"] and service_status(settings.service())["expected"] == ["simple"]
    deadline = time.monotonic() + 30
    while call_service(settings.service(), "run_status", run_id="never-sorts")["alive"]:
        assert time.monotonic() < deadline, "the run with no instance never ended"
        time.sleep(0.1)
    _, report = _sort(_job(synthetic_studyset, tmp_path, "a"), settings)
    assert not report.errored
    assert service_status(settings.service())["expected"] == []
    assert time.monotonic() - began < EXPECT_SORT_S, "forgotten because its run ended, not because its time was up"


def test_a_run_that_stops_before_dagster_executes_it_does_not_stay_starting(tmp_path, settings):
    """A run whose thread fails (or is interrupted) before Dagster's execution begins (here: a run with no
    code origin, refused at Dagster's first check) is marked failed by the run host; Dagster itself would
    have left it STARTING, as a killed launch's last run once stayed (test_faults)."""
    import dagster as dg
    from dagster import serialize_value
    from dagster._core.storage.dagster_run import DagsterRun

    from harness.instances import project_instance, run_once_it_leaves_starting
    from sf_assets.engines.service_client import call_service

    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_run(DagsterRun(job_name="sorting_job", run_id="no-origin", status=dg.DagsterRunStatus.STARTING))
        answer = call_service(
            settings.service(), "launch_run", run_id="no-origin", instance_ref=serialize_value(instance.get_ref()),
            environ=dict(os.environ), cwd=str(tmp_path), lease="", sorter="",
        )
        assert answer["launched"]
        run = run_once_it_leaves_starting(instance, "no-origin", within_s=60)
        assert run.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.get_records_for_run("no-origin", of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert "Run stopped before its execution could report its end" in failure.event_log_entry.dagster_event.message


SLOW_CODE = """
import pathlib
import time

import dagster as dg

try:
    for _ in range(300):  # 30 s of loading, in steps an interrupt can land between
        time.sleep(0.1)
except BaseException:
    pathlib.Path(__file__).with_name("interrupted-while-loading").touch()
    raise


@dg.op
def nothing():
    pass


@dg.job
def slow_job():
    nothing()


defs = dg.Definitions(jobs=[slow_job])
"""


def test_a_run_terminated_while_dagster_loads_its_code_ends_canceled(tmp_path, settings):
    """Dagster's catch-all around a run's execution swallows an interrupt that lands while it loads the
    run's code (it relies on the execution having reported the run's end, which it has not yet): the run
    host reports the run canceled.  Without that, its thread ended and the run stayed STARTING until a
    daemon's run monitoring timed it out."""
    import dagster as dg
    from dagster import serialize_value
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.storage.dagster_run import DagsterRun

    from harness.instances import project_instance, run_once_it_leaves_starting
    from sf_assets.engines.service_client import call_service

    (tmp_path / "slow_code.py").write_text(SLOW_CODE)
    code = ReconstructableRepository.for_file(str(tmp_path / "slow_code.py"), "defs", str(tmp_path))  # not loaded here
    origin = code.get_reconstructable_job("slow_job").get_python_origin()
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        run = DagsterRun(job_name="slow_job", run_id="slow-code", status=dg.DagsterRunStatus.STARTING,
                         job_code_origin=origin)  # fmt: skip
        instance.add_run(run)
        answer = call_service(
            settings.service(), "launch_run", run_id=run.run_id, instance_ref=serialize_value(instance.get_ref()),
            environ=dict(os.environ), cwd=str(tmp_path), lease="", sorter="",
        )
        assert answer["launched"]
        deadline = time.monotonic() + 60
        while not instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
            assert time.monotonic() < deadline, "Dagster never started executing the run"
            time.sleep(0.1)
        time.sleep(1.0)  # in Dagster's loading of slow_code.py now
        assert call_service(settings.service(), "terminate_run", run_id=run.run_id)["terminated"]
        assert run_once_it_leaves_starting(instance, run.run_id, within_s=15).status == dg.DagsterRunStatus.CANCELED
        assert (tmp_path / "interrupted-while-loading").exists(), "the interrupt landed in Dagster's loading of the code"


def test_a_run_whose_launcher_is_gone_before_it_reaches_the_service_ends_canceled(tmp_path, settings):
    """Its launcher (a command line dequeuing its own runs) is gone, so nobody would report a refusal: the
    service takes the run, and its thread reports it canceled without executing it (it has no code origin,
    so executing it would have failed it instead)."""
    import socket

    import dagster as dg
    from dagster import serialize_value
    from dagster._core.storage.dagster_run import DagsterRun

    from harness.instances import project_instance, run_once_it_leaves_starting
    from sf_assets.core.launcher_identity import LauncherIdentity
    from sf_assets.engines.service_client import call_service

    gone = LauncherIdentity(socket.gethostname(), os.getpid(), 1)  # this PID, another start time: not this process
    assert gone.is_gone()
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_run(DagsterRun(job_name="sorting_job", run_id="orphan", status=dg.DagsterRunStatus.STARTING))
        answer = call_service(
            settings.service(), "launch_run", run_id="orphan", instance_ref=serialize_value(instance.get_ref()),
            environ=dict(os.environ), cwd=str(tmp_path), lease=str(gone), sorter="",
        )
        assert answer["launched"]
        assert run_once_it_leaves_starting(instance, "orphan", within_s=60).status == dg.DagsterRunStatus.CANCELED


def test_a_client_that_goes_away_stops_its_sort(synthetic_studyset, tmp_path, settings):
    """The connection is the lease: a terminated run's step closes it, and the worker goes."""
    job = _job(synthetic_studyset, tmp_path, "interrupted", canary_first_n_s=3.0)
    events = run_sort(job, settings)
    started = next(events)
    canary = next(events)  # the canary is in; the full sort is running
    assert canary.status == "passed"
    events.close()  # what an interrupted Dagster step does to the generator
    assert _gone(started["worker_pid"]), "the worker was stopped"
    slot, report = _sort(_job(synthetic_studyset, tmp_path, "after"), settings)
    assert not report.errored and slot["worker_pid"] != started["worker_pid"]


def test_a_timed_out_sort_discards_its_worker(synthetic_studyset, tmp_path, settings):
    warm_slot, _ = _sort(_job(synthetic_studyset, tmp_path, "warm"), settings)
    slow = _job(synthetic_studyset, tmp_path, "slow")
    from dataclasses import replace

    slot, report = _sort(slow, replace(settings, timeout_min=0.005))  # 0.3 s: too short even when warm
    assert report.errored and report.timed_out and slot["worker_pid"] == warm_slot["worker_pid"]
    assert report.cpu_time_s is not None
    assert _gone(warm_slot["worker_pid"])
    again_slot, again = _sort(_job(synthetic_studyset, tmp_path, "again"), settings)
    assert not again.errored and again_slot["worker_pid"] != warm_slot["worker_pid"]


def test_a_worker_killed_mid_sort_fails_only_that_sort(synthetic_studyset, tmp_path, settings):
    job = _job(synthetic_studyset, tmp_path, "killed")
    events = run_sort(job, settings)
    started = next(events)
    time.sleep(0.5)
    os.kill(started["worker_pid"], signal.SIGKILL)
    report = list(events)[-1]
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    assert os.path.exists(report.console_path)
    _, after = _sort(_job(synthetic_studyset, tmp_path, "next"), settings)
    assert not after.errored


def test_the_service_exits_when_idle_and_starts_again_on_demand(synthetic_studyset, tmp_path, settings):
    from dataclasses import replace

    quick = replace(settings, service_idle_exit_s=1.0)
    slot, _ = _sort(_job(synthetic_studyset, tmp_path, "one"), quick)
    pid = service_status(quick.service())["pid"]
    assert _gone(pid, within_s=15), "the service exits after its idle time"
    assert _gone(slot["worker_pid"], within_s=5), "its workers go with it"
    assert not (service_folder(quick.service()) / "service.sock").exists()
    _, report = _sort(_job(synthetic_studyset, tmp_path, "two"), quick)
    assert not report.errored and service_status(quick.service())["pid"] != pid


def _ignored_signals(pid: int) -> set[int]:
    """The signals process ``pid`` ignores (its ``SigIgn`` mask)."""
    mask = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_service_started_with_stop_signals_ignored_leaves_none_of_its_processes_ignoring_them(
    settings, ignoring_stop_signals
):
    # A client in a background job (SIGINT ignored; Dagster maps SIGTERM to it) starts the service.
    with connect(settings.service()) as conn:
        conn.send({"op": "status"})
        pid = conn.recv()[1]["pid"]
    # multiprocessing's resource tracker and fork server (the run host), the sort workers' template and
    # the workers it forked for the two slots.
    processes = _wait_for_descendants(pid, at_least=5)
    assert signal.SIGTERM not in _ignored_signals(pid) and signal.SIGINT not in _ignored_signals(pid)
    checked = 0
    for child in processes:
        ignored = _ignored_signals(child)
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "multiprocessing.resource_tracker" in command:
            continue  # multiprocessing's tracker ignores both itself, to outlive its users and clean up after them
        assert signal.SIGTERM not in ignored, command
        if "multiprocessing.forkserver" not in command:  # the fork server ignores SIGINT itself, not its runs
            assert signal.SIGINT not in ignored, command
        checked += 1
    assert checked >= 4, "the run host, the workers' template and the two slots' workers"


def _wait_for_descendants(pid: int, at_least: int, within_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while True:
        found = _descendants(pid)
        if len(found) >= at_least or time.monotonic() > deadline:
            assert len(found) >= at_least, f"the service {pid} started {len(found)} processes"
            return found
        time.sleep(0.2)


def test_concurrent_first_clients_start_one_service(settings):
    service = settings.service()
    pids = []

    def ask():
        with connect(service) as conn:
            conn.send({"op": "status"})
            pids.append(conn.recv()[1]["pid"])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pids) == 4 and len(set(pids)) == 1


def test_a_client_gone_or_silent_during_the_handshake_leaves_the_service_accepting_others(settings):
    import socket

    with connect(settings.service()):  # the service is up
        pass
    address = str(service_folder(settings.service()) / "service.sock")
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(address)  # never answers the key's challenge
    for _ in range(3):  # each goes away before the challenge (a run killed while connecting)
        with socket.socket(socket.AF_UNIX) as gone:
            gone.connect(address)
    answered = []

    def ask():
        with connect(settings.service()) as conn:
            conn.send({"op": "status"})
            answered.append(conn.recv()[1]["pid"])

    client = threading.Thread(target=ask, daemon=True)
    client.start()
    client.join(timeout=30)
    silent.close()
    assert answered, "a later client got no answer: the service stopped accepting"


def test_a_client_without_the_key_is_refused(settings):
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    folder = service_folder(settings.service())
    with connect(settings.service()):
        pass
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(str(folder / "service.sock"), family="AF_UNIX", authkey=b"not the key")


def test_a_service_folder_open_to_others_is_refused(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="sfs-", dir="/tmp"))
    base.chmod(0o777)
    with pytest.raises(ServiceFolderError, match="mode 0700"):
        service_folder(ServiceSettings(base_dir=str(base)))


# What the run host's fork server imports (PRELOAD), for probes that stand in for a forked run.
IMPORT_PRELOAD = """
from sf_assets.engines.run_host import PRELOAD
for name in PRELOAD:
    try:
        __import__(name)
    except ImportError:
        pass
"""
# Counts, in ``reads``, each reading of Dagster's migration scripts from here on.
COUNT_SCRIPT_READS = """
from alembic.script import base
reads = []
_read = base.ScriptDirectory._load_revisions
def _counting(self):
    reads.append(1)
    return _read(self)
base.ScriptDirectory._load_revisions = _counting
"""


def _probe(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (process-wide patches stay there); the last line it printed."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def test_a_forked_run_imports_nothing_heavy_on_first_use_of_the_catalog_or_the_snr_filter():
    """Every run validates the spec against spikeinterface's sorters and a recording run filters for SNRs.

    Both import modules on first use (spikeinterface.sorters, scipy.signal: seconds of CPU
    per run); the run host's fork server must already hold them, or every run pays again.
    """
    probe = IMPORT_PRELOAD + """
import sys
import spikeinterface.core as si
from sf_assets.core.comparison import true_unit_snrs
from sf_assets.core.sorter_catalog import merge_params, resolve_sorter
recording, sorting = si.generate_ground_truth_recording(durations=[1.0], num_channels=2, num_units=2, seed=0)
before = set(sys.modules)
merge_params(resolve_sorter("MountainSort5"), {}, "spec.yaml")
true_unit_snrs(recording, sorting)
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("scipy", "spikeinterface", "numba", "sklearn"))
print(len(heavy), heavy[:10])
"""
    out = _probe(probe)
    assert out.startswith("0 "), out


def test_a_run_process_rebuilds_none_of_dagsters_sqlite_storage_and_stores_every_event(tmp_path):
    """On SQLite, Dagster checks its schema's revision four times per run, each reading every
    migration script again (0.23 s of a sorting run's 0.91 s of CPU), and makes an engine for each
    of a run's ~130 connections to its event log (0.08 s); the run host's processes keep both."""
    preload = "\n    ".join(IMPORT_PRELOAD.strip().splitlines())
    probe = f"""
import json, sys
import dagster as dg
if sys.argv[2] == "preloaded":
    {preload}
with dg.DagsterInstance.local_temp(sys.argv[1]):
    pass  # the instance exists: the launcher made it
{COUNT_SCRIPT_READS}
from dagster._core.storage.event_log.sqlite import sqlite_event_log
engines = []
real_engine = sqlite_event_log.create_engine
def making(*args, **kwargs):
    engines.append(1)
    return real_engine(*args, **kwargs)
sqlite_event_log.create_engine = making

@dg.asset
def probe(context):
    for i in range(20):
        context.log.info(f"message {{i}}")
    return dg.MaterializeResult(metadata={{"n": 1}})

with dg.DagsterInstance.local_temp(sys.argv[1]) as instance:  # a run's: its own instance, a new event log shard
    result = dg.materialize([probe], instance=instance)
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("message ")]
    assert messages == [f"message {{i}}" for i in range(20)], messages
    assert instance.get_latest_materialization_event(dg.AssetKey("probe")).run_id == result.run_id
counts = {{"reads": len(reads), "engines": len(engines)}}
# More storage configurations than Dagster's cache of three holds: it makes new objects for them.
for round in range(3):
    with dg.DagsterInstance.ephemeral():
        pass
    with dg.DagsterInstance.local_temp(sys.argv[1]):
        pass
    counts.setdefault("reads_after_first_round", len(reads))
counts["reads_after_three_rounds"] = len(reads)
print(json.dumps(counts))
"""

    def costs(mode: str) -> dict:
        (tmp_path / mode).mkdir()
        return json.loads(_probe(probe, str(tmp_path / mode), mode))

    plain, preloaded = costs("plain"), costs("preloaded")
    assert plain["reads"] >= 4, f"without the run host's preload, Dagster reads its scripts at every check: {plain}"
    assert plain["engines"] >= 30, f"and makes an engine per connection: {plain}"
    assert preloaded["reads"] == 0, preloaded
    assert preloaded["engines"] <= 3, f"one per shard (the run's, the index): {preloaded}"
    assert preloaded["reads_after_three_rounds"] == preloaded["reads_after_first_round"], (
        f"read once per configuration, even one whose object Dagster made again: {preloaded}"
    )


def test_the_launchers_process_reads_no_migration_script_for_the_runs_it_creates(tmp_path):
    """The daemon, the webserver and a command line create the runs they submit; on SQLite each new
    run's event-log shard is checked and stamped, two readings of Dagster's migration scripts per run,
    unless the process runs the project's launcher (dagster.yaml names it)."""
    probe = """
import sys
import dagster as dg
from sf_assets.orchestration.run_launcher import SortServiceRunLauncher
if sys.argv[2] == "launcher":
    SortServiceRunLauncher()
""" + COUNT_SCRIPT_READS + """

@dg.asset
def probe():
    return 1

with dg.DagsterInstance.local_temp(sys.argv[1]) as instance:
    assert dg.materialize([probe], instance=instance).success
    first = len(reads)
    for _ in range(3):  # three more runs: three new event-log shards
        assert dg.materialize([probe], instance=instance).success
print(len(reads) - first)
"""

    def reads_for_three_runs(mode: str) -> int:
        (tmp_path / mode).mkdir()
        return int(_probe(probe, str(tmp_path / mode), mode))

    assert reads_for_three_runs("plain") >= 3
    assert reads_for_three_runs("launcher") == 0


def test_another_dagster_release_keeps_its_own_event_log_connections(monkeypatch):
    """The engine-keeping connection method is Dagster 1.13.27's own, less the engine: not another release's."""
    import dagster
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from sf_assets.orchestration.storage_reuse import ENGINES_WRITTEN_FOR, share_event_log_engines

    assert dagster.__version__ == ENGINES_WRITTEN_FOR, "pyproject pins the release the method was written for"
    dagsters_own = SqliteEventLogStorage._connect
    monkeypatch.setattr(dagster, "__version__", "1.14.0")
    share_event_log_engines()
    assert SqliteEventLogStorage._connect is dagsters_own


def test_a_run_looks_up_each_of_its_dynamic_partition_keys_once_found():
    """Dagster checks a sorting run's two keys about 20 times (0.09 s of its CPU on SQLite)."""
    from sf_assets.engines.run_host import _remembering_found_partitions

    asked = []
    existing = {("sorters", "MountainSort5")}

    def has_dynamic_partition(partitions_def_name, partition_key):
        asked.append((partitions_def_name, partition_key))
        return (partitions_def_name, partition_key) in existing

    has_partition = _remembering_found_partitions(has_dynamic_partition)
    assert all(has_partition("sorters", "MountainSort5") for _ in range(5))
    assert not has_partition("recordings", "S/r1")
    existing.add(("recordings", "S/r1"))  # added while the run ran: a key not found is asked again
    assert has_partition("recordings", "S/r1") and has_partition("recordings", "S/r1")
    assert asked == [("sorters", "MountainSort5"), ("recordings", "S/r1"), ("recordings", "S/r1")]


def test_the_service_warms_its_run_host_before_its_workers_and_starts_them_whatever_happens():
    # A launch's first run needs the run host; its sorts, the workers, only after its recordings.
    from sf_assets.engines.sort_service import _warm_up

    calls = []

    class Runs:
        def start_fork_server(self):
            calls.append("run host")
            raise OSError("the fork server's preload failed")

    class Service:
        runs = Runs()

        def start_workers(self):
            calls.append("workers")

    with pytest.raises(OSError):
        _warm_up(Service())
    assert calls == ["run host", "workers"]


class _ProcessOfOneRun:
    """What the host's insisting touches of a run process: its live runs, its interrupts, its kill."""

    def __init__(self, run_id: str):
        self.live = {run_id}
        self.sent: list[tuple] = []
        self.killed_at: float | None = None
        self.process = self

    def send(self, message: tuple) -> bool:
        self.sent.append(message)
        return True

    def kill(self) -> None:
        self.killed_at = time.monotonic()


@pytest.mark.parametrize("reporting", [False, True])
def test_a_terminated_run_reporting_its_end_is_neither_interrupted_nor_killed_within_its_report_time(
    monkeypatch, reporting
):
    """Past the terminate grace, a run process executing only this run is killed; one whose run has
    left Dagster's execution and reports its end gets REPORT_GRACE_S more, without interrupts."""
    from sf_assets.engines import run_host
    from sf_assets.engines.run_host import HostedRun, RunHost

    monkeypatch.setattr(run_host, "INTERRUPT_AGAIN_S", 0.05)
    monkeypatch.setattr(run_host, "REPORT_GRACE_S", 1.0)
    process = _ProcessOfOneRun("r")
    hosted = HostedRun(process, None, reporting=reporting)
    started = time.monotonic()
    insisting = threading.Thread(target=RunHost()._insist, args=("r", hosted, 0.2))
    insisting.start()
    insisting.join(10)
    assert not insisting.is_alive() and process.killed_at is not None
    waited = process.killed_at - started
    if reporting:
        assert waited >= 1.0 and process.sent == [], "no interrupt lands in the report, no kill before its time"
    else:
        assert 0.2 <= waited < 1.0 and process.sent and set(process.sent) == {("interrupt", "r")}
