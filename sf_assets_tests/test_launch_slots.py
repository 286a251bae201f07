"""The launch's run slots: forked from one preloaded server, yet each in its launch's environment."""
from __future__ import annotations

import os

from sf_assets.launch import _started_slots


def _slot_sees() -> tuple[str | None, str]:
    with _started_slots(1, None) as (slot,):
        return slot.submit(os.getenv, "SF_ASSETS_SLOT_PROBE").result(), slot.submit(os.getcwd).result()


def test_a_slot_takes_the_environment_and_folder_of_the_launch_that_started_it(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("SF_ASSETS_SLOT_PROBE", "first")
    monkeypatch.chdir(first)
    assert _slot_sees() == ("first", str(first))
    # The fork server (started above, with the first environment) forks this launch's slot too.
    monkeypatch.setenv("SF_ASSETS_SLOT_PROBE", "second")
    monkeypatch.chdir(second)
    assert _slot_sees() == ("second", str(second))
    monkeypatch.delenv("SF_ASSETS_SLOT_PROBE")
    assert _slot_sees()[0] is None
