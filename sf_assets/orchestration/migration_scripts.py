"""Dagster's storage migration scripts, read once per process instead of at every schema check.

Dagster's SQLite storages check their schema's migration revision whenever
an instance opens them and whenever a run's event log shard is first
written: four checks per sorting run, each of which reads and compiles every
one of Dagster's migration scripts (about 90 files) again, 0.23 s of a
sorting run's 0.9 s of CPU on the embedded default.  The sort service's run
processes (:mod:`sf_assets.engines.run_host`) execute many runs each, so they
keep what the first check read.
"""
import threading


def read_migration_scripts_once() -> None:
    """Make alembic's ``ScriptDirectory.from_config`` return one directory per configuration object.

    Dagster asks for it on every revision check with one of its three
    cached configurations (run, event log and schedule storage); a new
    directory reads and compiles every migration script to find the head
    revision.  The scripts belong to the installed Dagster, which cannot
    change under a running process (an upgrade starts a new sort service:
    see engines.service_address), so the first reading stays right.
    """
    from alembic.script import ScriptDirectory

    read = ScriptDirectory.from_config.__func__
    if getattr(read, "reads_once", False):
        return
    directories: dict[tuple, tuple] = {}
    lock = threading.Lock()

    def from_config(cls, config):
        key = (cls, id(config))
        with lock:
            held = directories.get(key)
            if held is None:  # holding the config keeps its id from naming another one
                held = directories[key] = (config, read(cls, config))
        return held[1]

    from_config.reads_once = True
    # No public API: alembic offers no cache of a script directory, and Dagster no hook to share one.
    ScriptDirectory.from_config = classmethod(from_config)
