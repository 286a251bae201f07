"""The run queue every launch path shares, and how often the backfill daemon passes over a campaign.

``dagster.yaml`` names :class:`CampaignRunCoordinator`: Dagster's
``QueuedRunCoordinator`` (every run, whoever launched it, waits in one queue
under ``max_concurrent_runs``) with one setting more,
``backfill_pass_interval_seconds``.

Why the setting: a campaign backfilled from the UI (recordings, ground
truths, sortings, comparisons) needs two passes of Dagster's backfill daemon
before its first sort.  One pass launches the recordings' runs; the sortings
have a partitions definition of their own, so Dagster cannot put them in
those runs, and only a later pass, once the recordings have landed, launches
them.  Dagster 1.13 passes every 30 s and has no setting for it
(``DEFAULT_DAEMON_INTERVAL_SECONDS``), so the first sort started up to a
minute after the request (``make bench``: 59.6 to 60.5 s), while the
recordings took a few seconds.  The same wait follows every wave of a
backfill whose partitions depend on others'.

How: the daemon process builds the instance's run coordinator from
``dagster.yaml`` before it starts its daemons (it asks the coordinator
whether runs are queued, to know whether to start the queue's daemon), and
the backfill daemon reads Dagster's interval once, when it starts.  So the
coordinator's constructor sets the interval for its process.  Only the
daemon process runs backfill passes; in the webserver, a command line or a
run process the value is never read.  Dagster's legacy auto-materialize
daemon (without sensors) falls back to the same value; sf-assets' automation
runs as sensors, each with its own interval.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dagster
from dagster import DagsterInvalidConfigError, Field, IntSource, QueuedRunCoordinator
# No public API: the ConfigurableClass protocol dagster.yaml's module/class loading expects.
from dagster._serdes import ConfigurableClassData

INTERVAL_WRITTEN_FOR = "1.13.27"
"""The Dagster release whose backfill daemon reads ``DEFAULT_DAEMON_INTERVAL_SECONDS`` at its start."""

DEFAULT_BACKFILL_PASS_INTERVAL_S = 10
"""Seconds between the backfill daemon's passes when ``dagster.yaml`` does not say."""

CONCURRENCY_REPLACES = (
    ("max_concurrent_runs",),
    ("tag_concurrency_limits",),
    ("block_op_concurrency_limited_runs", "op_concurrency_slot_buffer"),
)
"""The queue settings that ``concurrency: runs`` / ``pools`` in ``dagster.yaml`` replace (Dagster's own list)."""

_log = logging.getLogger(__name__)


def set_backfill_pass_interval(seconds: int) -> bool:
    """Make this process's backfill daemon (started after this call) pass every ``seconds``.

    Parameters
    ----------
    seconds : int
        The interval, at least 1.

    Returns
    -------
    bool
        Whether it was set: only under the Dagster release this was written
        for, whose daemon reads the interval from its controller module when
        the daemon starts; under another release Dagster's own interval
        stays, with a warning.

    Raises
    ------
    ValueError
        If ``seconds`` is under 1.
    """
    if seconds < 1:
        raise ValueError(f"backfill_pass_interval_seconds: expected a whole number of seconds >= 1, got {seconds}")
    if dagster.__version__ != INTERVAL_WRITTEN_FOR:
        _log.warning(
            "sf-assets: backfill_pass_interval_seconds=%s not applied: written for Dagster %s, running %s; "
            "the backfill daemon keeps Dagster's own interval",
            seconds,
            INTERVAL_WRITTEN_FOR,
            dagster.__version__,
        )
        return False
    # No public API: the backfill daemon's interval is this module constant in Dagster 1.13.
    from dagster._daemon import controller

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds
    return True


class CampaignRunCoordinator(QueuedRunCoordinator):
    """Dagster's run queue; also sets the backfill daemon's pass interval in the daemon's process.

    Config: everything ``QueuedRunCoordinator`` takes, and
    ``backfill_pass_interval_seconds`` (default 10).
    """

    def __init__(self, backfill_pass_interval_seconds: int | None = None, **queue_config: Any):
        super().__init__(**queue_config)
        self._queue_config = dict(queue_config)
        self._backfill_pass_interval_s = (
            DEFAULT_BACKFILL_PASS_INTERVAL_S if backfill_pass_interval_seconds is None else backfill_pass_interval_seconds
        )
        set_backfill_pass_interval(self._backfill_pass_interval_s)

    def register_instance(self, instance) -> None:
        """Refuse queue limits set in the coordinator's config when ``concurrency`` is used, as Dagster does.

        Dagster refuses them when ``concurrency`` has ``runs`` or ``pools``,
        but checks only a coordinator whose class is named
        ``QueuedRunCoordinator``.  Under this subclass's name both would be
        accepted, and a limit also set under ``concurrency: runs`` would win
        silently over the coordinator's.  Refusing the same settings keeps a
        ``dagster.yaml`` valid here exactly when it is valid with Dagster's class.

        Parameters
        ----------
        instance : DagsterInstance
            The instance this coordinator serves.

        Raises
        ------
        DagsterInvalidConfigError
            If ``concurrency`` has ``runs`` or ``pools`` and the coordinator's config sets a limit they replace.
        """
        super().register_instance(instance)
        concurrency = instance.get_settings("concurrency") or {}
        if "runs" not in concurrency and "pools" not in concurrency:
            return
        for path in CONCURRENCY_REPLACES:
            value: Any = self._queue_config
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                raise DagsterInvalidConfigError(
                    f"dagster.yaml: run_coordinator.config.{'.'.join(path)} is incompatible with the "
                    f"`concurrency` section (it has {' and '.join(k for k in ('runs', 'pools') if k in concurrency)}): "
                    "set the limit under `concurrency: runs` only",
                    [],
                    None,
                )

    @property
    def backfill_pass_interval_seconds(self) -> int:
        """Seconds between the backfill daemon's passes that this coordinator asked for."""
        return self._backfill_pass_interval_s

    @classmethod
    def config_type(cls) -> dict:
        """The coordinator's fields in ``dagster.yaml``.

        Returns
        -------
        dict
            ``QueuedRunCoordinator``'s fields, and ``backfill_pass_interval_seconds``.
        """
        return {
            **QueuedRunCoordinator.config_type(),
            "backfill_pass_interval_seconds": Field(
                IntSource,
                is_required=False,
                description=(
                    "Seconds between the backfill daemon's passes (Dagster's own: 30). A backfill launches "
                    "partitions whose parents have landed only at its next pass."
                ),
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> CampaignRunCoordinator:
        """The coordinator ``dagster.yaml`` describes.

        Parameters
        ----------
        inst_data : ConfigurableClassData
            Where it was configured.
        config_value : Mapping
            Its fields; the queue's are ``QueuedRunCoordinator``'s own arguments.

        Returns
        -------
        CampaignRunCoordinator
            The coordinator.
        """
        queue_config = {key: value for key, value in config_value.items() if key != "backfill_pass_interval_seconds"}
        return cls(
            inst_data=inst_data,
            backfill_pass_interval_seconds=config_value.get("backfill_pass_interval_seconds"),
            **queue_config,
        )
