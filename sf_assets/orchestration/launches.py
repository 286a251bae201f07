"""Which launch a run belongs to: the runs that one action of a user started together.

A command line's runs share its lease tag, a backfill's runs its id, the
studyset sensor's runs for one manifest and spec their sources digest, and a
schedule's runs its name; any other run (one materialization from the UI, a
test's run) is a launch of its own.  Two things are decided per launch: how
many of its sorts run at once (``sorts_at_once``, enforced by the sort
service) and when the fan-in results catch up (after a launch's last result,
not after each one: ``sf_assets.orchestration.assets.automation``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LEASE_TAG = "sf-assets/lease"
"""Identity (host:pid:start) of the command line that launched the run, whose runs end when it does
(see ``sf_assets.orchestration.run_launcher``)."""
TRIGGER_TAG = "sf-assets/trigger"
"""What requested a run that no backfill or command line did (the studyset sensor)."""
SOURCES_TAG = "sf-assets/sources"
"""The first 12 hex digits of the sources' digest the studyset sensor requested the run for."""
CAMPAIGN_TAG = "sf-assets/campaign"
"""A command-line launch's campaign (the first 12 hex digits of ``Campaign.digest``): the studyset
sensor leaves a campaign to the command line that is sorting it."""
BACKFILL_TAG = "dagster/backfill"
SCHEDULE_TAG = "dagster/schedule_name"

_LAUNCH_TAGS = (LEASE_TAG, BACKFILL_TAG, SOURCES_TAG, SCHEDULE_TAG)


def campaign_tag_value(campaign_digest: str) -> str:
    """The :data:`CAMPAIGN_TAG` value of a campaign (the first 12 hex digits of ``Campaign.digest()``).

    Parameters
    ----------
    campaign_digest : str
        ``Campaign.digest()``.

    Returns
    -------
    str
        The tag's value.
    """
    return campaign_digest[:12]


def launch_of(run_id: str, tags: Mapping[str, str]) -> str:
    """The launch a run belongs to, named by the first launch tag it has.

    Parameters
    ----------
    run_id : str
        The run's id: the launch of a run that has no launch tag.
    tags : Mapping[str, str]
        The run's tags.

    Returns
    -------
    str
        ``"<tag>=<value>"`` of its lease, backfill, sensor sources or
        schedule, in that order; else ``"run=<run_id>"``.
    """
    for tag in _LAUNCH_TAGS:
        if tags.get(tag):
            return f"{tag}={tags[tag]}"
    return f"run={run_id}"


@dataclass(frozen=True)
class RunInFlight:
    """A queued or running run, as far as the fan-ins care.

    ``feeds``: the fan-in's inputs this run materializes (its asset selection
    among them); ``landed``: those it has already landed.
    """

    launch: str
    feeds: frozenset[str] = frozenset()
    landed: frozenset[str] = frozenset()

    def may_land_more(self) -> bool:
        """Can this run still bring the fan-in a result, or start runs that do?

        Returns
        -------
        bool
            False only for a run that has landed every input it feeds: what
            is left of it (its step's end, the run's teardown) changes nothing
            the fan-in reads.  A run that feeds none (a recording's run) may
            still lead to sorts of its launch: True.
        """
        return not self.feeds or not self.feeds <= self.landed


def some_launch_settled(landed_launches: Iterable[str], in_flight: Iterable[RunInFlight]) -> bool:
    """Has one of the launches that landed unread results nothing left that may land more?

    Parameters
    ----------
    landed_launches : iterable of str
        The launches (:func:`launch_of`) of the runs that landed results the fan-in has not read.
    in_flight : iterable of RunInFlight
        Every queued or running run.

    Returns
    -------
    bool
        True when some landed launch has no run in flight that :meth:`RunInFlight.may_land_more`.
    """
    busy = {run.launch for run in in_flight if run.may_land_more()}
    return bool(set(landed_launches) - busy)


def queue_capacity(instance) -> int:
    """The run queue's ``max_concurrent_runs`` as its daemon applies it (0 without a queue).

    That is ``concurrency: runs`` in ``dagster.yaml`` where set there, else the coordinator's own config.

    Parameters
    ----------
    instance : DagsterInstance
        The instance.

    Returns
    -------
    int
        The runs it lets run at once; 0 when it has no run queue.
    """
    queue = instance.get_concurrency_config().run_queue_config
    return max(0, queue.max_concurrent_runs) if queue is not None else 0
