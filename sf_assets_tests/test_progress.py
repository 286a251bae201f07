"""The command line's campaign display: live on a terminal, plain lines elsewhere."""
from __future__ import annotations

import io
import os
import pty

from sf_assets.cli.progress import CampaignCounts, LiveProgress


def test_off_a_terminal_it_prints_plain_lines_only():
    out = io.StringIO()
    with LiveProgress(out) as live:
        live.say("[sortings 1/2] MountainSort5/s/r: ok (3.0 s)")
        live.update(CampaignCounts(2, 2, 1, 2, 0, 1))
    assert out.getvalue() == "[sortings 1/2] MountainSort5/s/r: ok (3.0 s)\n"


def test_on_a_terminal_it_shows_counts_running_failures_and_time():
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        with LiveProgress(terminal) as live:
            live.say("[recordings 2/2] s.r: ok")
            live.update(CampaignCounts(2, 2, 3, 8, 1, 4))
            live.progress.refresh()
        terminal.flush()
        shown = os.read(leader, 65536).decode(errors="replace")
    os.close(leader)
    assert "[recordings 2/2] s.r: ok" in shown
    assert "recordings" in shown and "2/2" in shown
    assert "sortings" in shown and "3/8" in shown
    assert "4 running or queued, 1 failed" in shown
    assert "left" in shown
