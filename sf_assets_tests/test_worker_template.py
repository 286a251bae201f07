"""Sort workers forked from the service's template: a process group each, exits reported, dying with it.

These start a real template (it imports spikeinterface once) and real
forked workers; the sort service's own tests (``test_sort_service.py``) run
real sorts on them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from sf_assets.engines.supervisor import KILL_GRACE_S, stop_process_group
from sf_assets.engines.worker_template import TEMPLATE_GONE_CODE, WorkerTemplate


@pytest.fixture
def template():
    template = WorkerTemplate(dict(os.environ))
    yield template
    template.close(wait_s=5.0)


def _ppid(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # dead, waiting for whoever adopted it to reap it
            return True
        time.sleep(0.05)
    return False


def _within(seconds: float, call):
    """``call()``'s value, or a test failure if it has not returned after ``seconds`` (instead of a hung suite)."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"{call} did not return within {seconds} s"
    return box[0]


def test_workers_are_forked_from_one_template_each_leading_its_own_group(template):
    first = template.spawn({**os.environ, "SF_ASSETS_TEST_SLOT": "0"})
    second = template.spawn({**os.environ, "SF_ASSETS_TEST_SLOT": "1"})
    assert _ppid(first.pid) == _ppid(second.pid) != os.getpid(), "both forked by one template, not started here"
    assert os.getpgid(first.pid) == first.pid and os.getpgid(second.pid) == second.pid
    assert first.poll() is None
    first.stdin.close()  # the end of its command stream: a warm worker exits
    assert first.wait(30) == 0
    status = first.exit_status(timeout=None)
    assert status[0] == 0 and status[1] is not None, "the template's report: exit code and CPU seconds"
    assert first.exit_status(timeout=None) == status, "asked again: the same report"


def test_a_worker_stopped_right_after_it_was_forked_is_stopped_and_reported(template):
    """The service may stop a worker at once (a timeout, an interrupted step): its group must already exist."""
    for _ in range(5):
        worker = template.spawn(dict(os.environ))
        _within(30, lambda: stop_process_group(worker, 1.0))
        code, cpu_s = _within(30, lambda: worker.exit_status(timeout=None))
        assert code == -signal.SIGTERM and cpu_s is not None


def test_a_template_started_with_stop_signals_ignored_forks_workers_that_sigterm_stops(ignoring_stop_signals):
    template = WorkerTemplate(dict(os.environ))  # inherits SIGTERM and SIGINT ignored from this process
    try:
        worker = template.spawn(dict(os.environ))
        asked = time.monotonic()
        _within(30, lambda: stop_process_group(worker, KILL_GRACE_S))
        code, _ = _within(30, lambda: worker.exit_status(timeout=None))
        assert code == -signal.SIGTERM, "ignored SIGTERM: the grace ran out and SIGKILL ended it"
        assert time.monotonic() - asked < KILL_GRACE_S
    finally:
        template.close(wait_s=5.0)


def test_a_killed_worker_reports_the_signal(template):
    worker = template.spawn(dict(os.environ))
    os.kill(worker.pid, signal.SIGKILL)
    assert _within(30, lambda: worker.exit_status(timeout=None))[0] == -signal.SIGKILL


def test_workers_die_with_their_template_and_the_next_spawn_starts_a_new_one(template):
    worker = template.spawn(dict(os.environ))
    template_pid = _ppid(worker.pid)
    os.kill(template_pid, signal.SIGKILL)
    assert _within(30, lambda: worker.wait()) == TEMPLATE_GONE_CODE
    assert _gone(worker.pid, within_s=10), "a worker stops when its template is gone"
    again = template.spawn(dict(os.environ))
    assert _ppid(again.pid) != template_pid
    again.stdin.close()
    assert again.wait(30) == 0


def test_closing_the_template_ends_it_and_its_workers():
    """It exits by itself at the end of its socket, at once: not killed once ``wait_s`` has passed.

    A busy allocation's service closes its template as the allocation ends, so
    its end (and ``squeue``'s) waits for this.
    """
    template = WorkerTemplate(dict(os.environ))
    worker = template.spawn(dict(os.environ))
    template_pid = _ppid(worker.pid)
    process = template._current.proc
    started = time.monotonic()
    template.close(wait_s=10)
    assert time.monotonic() - started < 5.0
    assert process.returncode == 0, "it ended itself, not killed"
    assert _gone(template_pid, within_s=1)
    assert _gone(worker.pid, within_s=10)


def test_waiting_on_a_running_worker_times_out_as_popen_does(template):
    worker = template.spawn(dict(os.environ))
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(0.0)
    worker.stdin.close()
    assert worker.wait(30) == 0


def test_a_worker_copies_itself_only_when_the_copy_survives_the_fork(monkeypatch):
    """The service's workers run on numba's workqueue layer; on OpenMP a forked copy would be killed."""
    from sf_assets.engines import worker_clone
    from sf_assets.engines.worker_clone import why_not_copyable

    monkeypatch.setattr(worker_clone, "child_processes", list)  # whatever this test process has started
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    assert why_not_copyable(template_pid=1) is None
    assert "template" in why_not_copyable(template_pid=None)
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    assert "threading layer" in why_not_copyable(template_pid=1)


POOL_LEFT_RUNNING = """
import json, os
import joblib
from sf_assets.engines.worker_clone import why_not_copyable
from multiprocessing import resource_tracker

os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
resource_tracker.ensure_running()  # a tracker alone shares only a pipe: still copyable
before = why_not_copyable(template_pid=1)
joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(abs)(-i) for i in range(4))  # as a sort may leave it
print(json.dumps([before, why_not_copyable(template_pid=1)]))
"""


def test_a_worker_that_a_sort_left_a_process_pool_in_is_not_copied():
    """A copy would share the pool's processes without the threads that feed them: spikeinterface's
    simple, on a 300 s recording, leaves joblib's loky executor running, and its copy's next sort
    waited on it for good."""
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", POOL_LEFT_RUNNING], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before is None
    assert after is not None and "child processes" in after and "loky" in after.lower(), after


def test_a_copy_of_a_worker_is_the_templates_child_in_its_own_group_and_reported_when_it_exits(template):
    from sf_assets.engines.threads import thread_limited_env
    from sf_assets.engines.warm_worker import WarmWorker

    env = thread_limited_env(1, os.environ)
    source = WarmWorker(env, template)
    copy = source.copy(template, gone=lambda: False)
    assert isinstance(copy, WarmWorker), copy
    assert copy.pid != source.pid and _ppid(copy.pid) == _ppid(source.pid), "adopted by the template"
    assert os.getpgid(copy.pid) == copy.pid
    copy.proc.stdin.close()  # the end of its command stream (the FIFO): it exits
    assert copy.proc.wait(30) == 0 and copy.proc.exit_status(timeout=None)[1] is not None
    assert source.alive()


def test_a_forked_worker_starts_with_the_sorters_lazy_imports_loaded(template):
    """spikeinterface's own sorters import scipy.signal, sklearn and the sorting components inside their
    first sort (about 2 s of a new worker's first sort here): the template imports them once instead."""
    worker = template.spawn(dict(os.environ))
    try:
        with open(f"/proc/{worker.pid}/maps") as maps:
            mapped = maps.read()
        for package in ("scipy/signal/", "sklearn/"):
            assert f"site-packages/{package}" in mapped, f"{package} not loaded in the worker before its first job"
    finally:
        worker.stdin.close()
        worker.wait(30)


def test_a_template_warmed_with_a_sorter_reports_it_and_forks_workers_that_have_its_code(tmp_path):
    """The warm-up (engines/warm_up.py): the template sorts a synthetic recording with ``simple`` before
    forking; the report names it, with the numba functions compiled, and nothing of the recording is left.
    That the forked workers then sort without compiling is tested on Slurm (test_slurm_campaign.py)."""
    from sf_assets.engines import warm_up
    from sf_assets.engines.threads import thread_limited_env

    sorters = [{"sorter_name": "Simple", "si_sorter_name": "simple", "params": {}}]
    text = warm_up.encode(sorters, str(tmp_path / "jit"), tmp_path)
    env = {k: v for k, v in thread_limited_env(1, os.environ).items() if k != "NUMBA_CACHE_DIR"}  # an empty cache
    template = WorkerTemplate({**env, warm_up.ENV: text})
    try:
        worker = template.spawn(dict(os.environ))  # forked once the warm-up is over
        (entry,) = json.loads((tmp_path / warm_up.REPORT_FILE).read_text())["sorters"]
        assert entry["error"] is None and entry["compiled"] > 0, entry
        assert warm_up.warmed(tmp_path) == {"simple"}
        assert not (tmp_path / "warm-up").exists(), "the synthetic recording and its sorting are removed"
        worker.stdin.close()
        worker.wait(30)
    finally:
        template.close(wait_s=5.0)
    # Another template with the same cache leaves simple to it: its workers load the code themselves.
    again = WorkerTemplate({**env, warm_up.ENV: text})
    try:
        again.spawn(dict(os.environ)).stdin.close()
        (entry,) = json.loads((tmp_path / warm_up.REPORT_FILE).read_text())["sorters"]
        assert entry["error"] == warm_up.SKIPPED and warm_up.warmed(tmp_path) == set(), entry
    finally:
        again.close(wait_s=5.0)


def test_a_warm_up_that_fails_is_reported_and_the_template_still_forks_workers(tmp_path):
    from sf_assets.engines import warm_up

    sorters = [{"sorter_name": "Simple", "si_sorter_name": "simple", "params": {"no_such_parameter": 1}}]
    template = WorkerTemplate({**os.environ, warm_up.ENV: warm_up.encode(sorters, None, tmp_path)})
    try:
        worker = template.spawn(dict(os.environ))
        assert warm_up.warmed(tmp_path) == set()
        (entry,) = json.loads((tmp_path / warm_up.REPORT_FILE).read_text())["sorters"]
        assert "no_such_parameter" in entry["error"]
        worker.stdin.close()
        assert worker.wait(30) == 0
    finally:
        template.close(wait_s=5.0)


def test_a_warm_up_still_waiting_for_another_templates_turn_at_its_deadline_warms_nothing(tmp_path):
    """One warm-up of a sorter at a time per JIT cache, and none past the budget: while another
    template holds simple's lock, a warm-up with a half-second budget gives up on it, reported."""
    import fcntl
    import subprocess
    import sys

    from sf_assets.engines import jit_cache, warm_up

    lock = tmp_path / "jit" / jit_cache.SORTER_MARKS / "simple.warm-up.lock"
    lock.parent.mkdir(parents=True)
    sorters = [{"sorter_name": "Simple", "si_sorter_name": "simple", "params": {}}]
    text = warm_up.encode(sorters, str(tmp_path / "jit"), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = "import sys; from sf_assets.engines import warm_up; warm_up.BUDGET_S = 0.5; warm_up.run(sys.argv[1])"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another template is warming simple
        # Without the deadline it would wait for the lock for good (and time out here).
        subprocess.run([sys.executable, "-c", code, text], env=env, check=True, timeout=120)
    (entry,) = json.loads((tmp_path / warm_up.REPORT_FILE).read_text())["sorters"]
    assert entry["error"].startswith("not warmed") and "another template" in entry["error"], entry
    assert entry["compiled"] == 0 and warm_up.warmed(tmp_path) == set()
