"""Telling a run orphaned by a dead launching process from one still executing."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from sf_assets.core.launcher_identity import LauncherIdentity, process_start_ticks, this_process


def test_identity_round_trips_through_its_tag():
    me = this_process()
    assert LauncherIdentity.parse(str(me)) == me
    assert me.host == socket.gethostname() and me.pid == os.getpid() and me.start_ticks > 0
    # A host name with a colon (IPv6-like) still parses from the right.
    assert LauncherIdentity.parse("fe80::1:42:7") == LauncherIdentity("fe80::1", 42, 7)


def test_anything_else_concludes_nothing():
    for text in ("", "host", "host:12", "host:pid:1", "host:1:start", "host:-1:2"):
        assert LauncherIdentity.parse(text) is None, text


def test_a_live_process_is_not_gone_and_a_dead_one_is():
    assert not this_process().is_gone()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = process_start_ticks(child.pid)
        alive = LauncherIdentity(socket.gethostname(), child.pid, ticks)
        assert not alive.is_gone()
    finally:
        child.kill()
        child.wait()
    assert alive.is_gone()
    assert process_start_ticks(child.pid) is None


def test_a_reused_pid_is_not_the_same_process():
    me = this_process()
    assert LauncherIdentity(me.host, me.pid, me.start_ticks + 1).is_gone()


def test_another_host_is_never_judged():
    assert not LauncherIdentity("some-other-host", 999999, 1).is_gone()
