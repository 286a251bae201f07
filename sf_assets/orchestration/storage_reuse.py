"""What processes keep between their uses of Dagster's SQLite storage, instead of rebuilding it for every run.

The sort service's run processes (:mod:`sf_assets.engines.run_host`) execute
many runs each, and on the embedded default (SQLite) Dagster rebuilds two
things over and over that cannot change under a running process:

* its schema's migration scripts: the storages check their revision
  whenever a run's instance opens them and whenever a run's event log shard
  is first written, four checks per sorting run, each reading and compiling
  every one of Dagster's migration scripts (about 90 files) again: 0.23 s of
  a sorting run's 0.91 s of CPU (:func:`read_migration_scripts_once`);
* a SQLAlchemy engine for every connection to an event log shard (about 130
  per sorting run), made and disposed around each query: 0.08 s of the
  0.56 s left (:func:`share_event_log_engines`).

Measured as the thread CPU of each sorting run of ``make demo``: median
0.91 s before, 0.48 s with both (and a run's dynamic partitions looked up
once, see run_host).  Dagster's PostgreSQL storage has neither cost: it makes
one engine per storage, and does not check the revision when a run's
instance opens it.

The processes that create runs (the daemon, the webserver, a command line)
check and stamp each new run's event-log shard, two readings of the scripts
per run: the project's run launcher keeps the scripts in whichever process
builds it (:class:`~sf_assets.orchestration.run_launcher.SortServiceRunLauncher`).
"""
import threading
from contextlib import contextmanager

ENGINES_WRITTEN_FOR = "1.13.27"
"""The Dagster release whose ``SqliteEventLogStorage._connect`` :func:`share_event_log_engines` replaces."""


def read_migration_scripts_once() -> None:
    """Make alembic's ``ScriptDirectory.from_config`` return one directory per migration configuration.

    Dagster asks for it on every revision check, with the configuration of
    the storage checked (its ``alembic.ini`` and script location); a new
    directory reads and compiles every migration script to find the head
    revision.  The scripts belong to the installed Dagster, which cannot
    change under a running process (an upgrade starts a new sort service:
    see engines.service_address), so the first reading stays right.  Kept
    by what the configuration says, not by the object: Dagster makes a new
    object for a configuration its small cache has dropped.
    """
    from alembic.script import ScriptDirectory

    read = ScriptDirectory.from_config.__func__
    if getattr(read, "reads_once", False):
        return
    directories: dict[tuple, ScriptDirectory] = {}
    lock = threading.Lock()

    def from_config(cls, config):
        key = (cls, config.config_file_name, config.get_main_option("script_location"))
        with lock:
            if key not in directories:
                directories[key] = read(cls, config)
            return directories[key]

    from_config.reads_once = True
    # No public API: alembic offers no cache of a script directory, and Dagster no hook to share one.
    ScriptDirectory.from_config = classmethod(from_config)


def share_event_log_engines() -> None:
    """Make Dagster's SQLite event log storage keep one engine per shard instead of one per connection.

    Each connection still opens and closes its own SQLite connection
    (``NullPool``, as Dagster has it), under the storage's lock, and a shard
    is still initialized before its first use: only the engine, which holds
    no connection, is kept with the storage, and goes with it.  The method
    below is Dagster's own (:data:`ENGINES_WRITTEN_FOR`) less the engine's
    making and disposal; under any other Dagster release, nothing changes.
    """
    import dagster

    # No public API: the storage's connection method, and what it builds engines with.
    from dagster._core.storage.event_log.sqlite import sqlite_event_log as module

    storage_class = module.SqliteEventLogStorage
    if getattr(storage_class._connect, "shares_engines", False) or dagster.__version__ != ENGINES_WRITTEN_FOR:
        return  # another Dagster may connect otherwise: its own method stays

    @contextmanager
    def _connect(self, shard: str):
        with self._db_lock:
            engines = self.__dict__.setdefault("_engine_by_shard", {})
            engine = engines.get(shard)
            if engine is None:
                engine = engines[shard] = module.create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=module.NullPool,
                    connect_args={"timeout": module.SQLITE_BUSY_TIMEOUT_SECONDS},
                )
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    _connect.shares_engines = True
    storage_class._connect = _connect
