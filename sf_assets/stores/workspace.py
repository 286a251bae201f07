"""The workspace database: labelled recordings, ground truths and sortings.

SpikeForest posted its results to a web workspace; sf-assets keeps the same
labelled entries in a real database through SQLAlchemy (a SQLite file by
default, PostgreSQL in deployments).  A unique ``(workspace_id, label)``
constraint plus ``INSERT ... ON CONFLICT DO NOTHING`` makes a sync idempotent
even when two syncs run at once: neither duplicates a label, neither fails on
the race, and each reports truthfully which labels it added.

What to add is decided by :mod:`sf_assets.core.workspace_plan`; this module
only reads labels and writes the missing rows.
"""
from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.schema import CreateTable

from sf_assets.core.errors import WorkspaceError
from sf_assets.core.workspace_plan import SyncPlan, WorkspaceEntry, plan_sync

WORKSPACE_URI_PREFIX = "workspace://"
_WORKSPACE_URI_RE = re.compile(r"^workspace://[0-9a-f]{32}$")

_metadata = MetaData()

workspaces_table = Table(
    "workspaces",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uri", String(64), nullable=False, unique=True),
    Column("name", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

workspace_entries_table = Table(
    "workspace_entries",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workspace_id", Integer, ForeignKey("workspaces.id"), nullable=False),
    Column("label", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("uri", Text, nullable=False),
    Column("study_name", Text, nullable=False),
    Column("recording_name", Text, nullable=False),
    Column("sorter_name", Text, nullable=True),
    Column("details", JSON, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("workspace_id", "label", name="uq_workspace_entries_workspace_label"),
)

_DIALECT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass(frozen=True)
class SyncReport:
    """What a sync did (or, for a dry run, would do), in the entries' order.

    ``already_present`` includes labels another sync inserted while this one
    ran: they were not added by this sync.
    """

    added: list[str]
    already_present: list[str]
    dry_run: bool


def is_workspace_uri(text: str) -> bool:
    """Return True if ``text`` is ``workspace://`` followed by 32 lowercase hex digits.

    Parameters
    ----------
    text : str
        A string from a user or a record.

    Returns
    -------
    bool
        True for a well-formed workspace URI.
    """
    return isinstance(text, str) and _WORKSPACE_URI_RE.match(text) is not None


class WorkspaceStore:
    """Workspaces and their entries in one SQL database.

    The engine (and its connection pool) is created once per store; call
    :meth:`dispose` when done.  Tables are created by the first write; reads
    on a database without them see no workspaces, so a dry run never writes.

    Parameters
    ----------
    db_url : str
        A SQLAlchemy URL: ``sqlite:////abs/path/workspace.db`` or
        ``postgresql+psycopg2://user@host:port/db``.
    busy_timeout_s : float
        SQLite only: how long a writer waits for another process's write lock
        before giving up.
    """

    def __init__(self, db_url: str, busy_timeout_s: float = 30.0) -> None:
        self.db_url = db_url
        self._engine = _make_engine(db_url, busy_timeout_s)
        self._dialect = self._engine.dialect.name
        if self._dialect not in _DIALECT_INSERTS:
            self._engine.dispose()
            raise WorkspaceError(
                f"workspace database {self.where}: dialect {self._dialect!r} is not supported; "
                f"expected one of {sorted(_DIALECT_INSERTS)}"
            )
        self._schema_ready = False

    @property
    def where(self) -> str:
        """The database URL for messages, password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close every pooled connection (the store can still be used afterwards)."""
        self._engine.dispose()

    # -- workspaces ---------------------------------------------------------

    def create_workspace(self, name: str | None = None) -> str:
        """Create an empty workspace and return its URI ``workspace://<hex>``.

        Parameters
        ----------
        name : str or None
            A name people may find it by (:meth:`workspace_by_name`).

        Returns
        -------
        str
            The new workspace's URI.
        """
        self._ensure_schema()
        uri = f"{WORKSPACE_URI_PREFIX}{uuid.uuid4().hex}"
        with self._writing(f"create workspace {uri}") as conn:
            conn.execute(
                workspaces_table.insert().values(
                    uri=uri, name=name, created_at=datetime.now(timezone.utc)
                )
            )
        return uri

    def workspace_by_name(self, name: str) -> str | None:
        """URI of the oldest workspace called ``name``, or None.

        Parameters
        ----------
        name : str
            The name.

        Returns
        -------
        str or None
            The URI.
        """
        if not self._schema_exists():
            return None
        with self._reading(f"look up workspace named {name!r}") as conn:
            row = conn.execute(
                select(workspaces_table.c.uri)
                .where(workspaces_table.c.name == name)
                .order_by(workspaces_table.c.id)
                .limit(1)
            ).first()
        return None if row is None else row[0]

    def named_workspace(self, name: str) -> str:
        """The workspace called ``name``, created on first use.

        Two processes may both create one at the same moment; both then
        settle on the oldest, so they sync into the same workspace.

        Parameters
        ----------
        name : str
            The name.

        Returns
        -------
        str
            The workspace's URI.
        """
        return self.workspace_by_name(name) or (self.create_workspace(name) and self.workspace_by_name(name))

    def workspace_exists(self, uri: str) -> bool:
        """Return True if ``uri`` is a well-formed URI of a workspace in this database.

        Parameters
        ----------
        uri : str
            A URI.

        Returns
        -------
        bool
            True when the database holds it.
        """
        if not is_workspace_uri(uri) or not self._schema_exists():
            return False
        with self._reading(f"look up workspace {uri}") as conn:
            return _workspace_id(conn, uri) is not None

    def require_workspace(self, uri: str) -> None:
        """Raise :class:`WorkspaceError` unless ``uri`` names a workspace here.

        Parameters
        ----------
        uri : str
            A URI.

        Raises
        ------
        WorkspaceError
            Naming the URI and the database.
        """
        self._workspace_id_or_raise(uri)

    # -- entries ------------------------------------------------------------

    def existing_labels(self, uri: str) -> set[str]:
        """Return the labels workspace ``uri`` holds.

        Parameters
        ----------
        uri : str
            The workspace.

        Returns
        -------
        set[str]
            Its labels.
        """
        workspace_id = self._workspace_id_or_raise(uri)
        entries = workspace_entries_table
        with self._reading(f"read the labels of workspace {uri}") as conn:
            rows = conn.execute(select(entries.c.label).where(entries.c.workspace_id == workspace_id))
            return set(rows.scalars())

    def list_entries(self, uri: str) -> list[WorkspaceEntry]:
        """Return the entries of workspace ``uri`` in the order they were added.

        Parameters
        ----------
        uri : str
            The workspace.

        Returns
        -------
        list[WorkspaceEntry]
            Its entries.
        """
        workspace_id = self._workspace_id_or_raise(uri)
        entries = workspace_entries_table
        query = (
            select(
                entries.c.label,
                entries.c.kind,
                entries.c.uri,
                entries.c.study_name,
                entries.c.recording_name,
                entries.c.sorter_name,
                entries.c.details,
            )
            .where(entries.c.workspace_id == workspace_id)
            .order_by(entries.c.id)
        )
        with self._reading(f"read the entries of workspace {uri}") as conn:
            return [
                WorkspaceEntry(
                    label=row.label,
                    kind=row.kind,
                    uri=row.uri,
                    study_name=row.study_name,
                    recording_name=row.recording_name,
                    sorter_name=row.sorter_name,
                    details=row.details,
                )
                for row in conn.execute(query)
            ]

    def plan(self, uri: str, entries: Iterable[WorkspaceEntry]) -> SyncPlan:
        """Compare ``entries`` with the labels of workspace ``uri`` (reads only).

        Parameters
        ----------
        uri : str
            The workspace (empty when it does not exist yet).
        entries : Iterable[WorkspaceEntry]
            What should be there.

        Returns
        -------
        SyncPlan
            The entries to add and the labels already present.
        """
        return plan_sync(entries, self.existing_labels(uri))

    def sync(
        self, uri: str, entries: Iterable[WorkspaceEntry], dry_run: bool = False
    ) -> SyncReport:
        """Add to workspace ``uri`` the entries whose labels it lacks.

        Parameters
        ----------
        uri : str
            An existing workspace.
        entries : iterable of WorkspaceEntry
            With unique labels.
        dry_run : bool
            If True, only read: report what would be added, write nothing.

        Returns
        -------
        SyncReport

        Raises
        ------
        WorkspaceError
            If the workspace is missing, or the database refuses the insert.
        """
        plan = self.plan(uri, entries)
        if dry_run:
            return SyncReport(
                added=[entry.label for entry in plan.to_add],
                already_present=list(plan.already_present),
                dry_run=True,
            )
        return self.apply_plan(uri, plan)

    def apply_plan(self, uri: str, plan: SyncPlan) -> SyncReport:
        """Insert the plan's entries that are still missing, in one transaction.

        The plan may be stale: a label another sync inserted since the plan was
        made is skipped by the database and reported as already present.
        Rows go in sorted by label, so two concurrent syncs take their row
        locks in the same order and cannot deadlock (PostgreSQL).

        Parameters
        ----------
        uri : str
            The workspace.
        plan : SyncPlan
            From :meth:`plan`.

        Returns
        -------
        SyncReport
            Labels added and labels already present.
        """
        workspace_id = self._workspace_id_or_raise(uri)
        inserted: set[str] = set()
        if plan.to_add:
            insert = _DIALECT_INSERTS[self._dialect]
            entries = workspace_entries_table
            added_at = datetime.now(timezone.utc)
            rows = [
                _entry_row(entry, workspace_id, added_at)
                for entry in sorted(plan.to_add, key=lambda entry: entry.label)
            ]
            statement = (
                insert(entries)
                .on_conflict_do_nothing(index_elements=["workspace_id", "label"])
                .returning(entries.c.label)
            )
            with self._writing(f"add entries to workspace {uri}") as conn:
                # One compiled statement, sent as multi-row batches ("insertmanyvalues");
                # RETURNING yields only the rows this transaction inserted.
                inserted.update(conn.execute(statement, rows).scalars())
        added = [entry.label for entry in plan.to_add if entry.label in inserted]
        raced = [entry.label for entry in plan.to_add if entry.label not in inserted]
        return SyncReport(
            added=added, already_present=[*plan.already_present, *raced], dry_run=False
        )

    # -- internals ----------------------------------------------------------

    def _workspace_id_or_raise(self, uri: str) -> int:
        if not is_workspace_uri(uri):
            raise WorkspaceError(
                f"workspace URI {uri!r} is malformed (database {self.where}): expected "
                f"{WORKSPACE_URI_PREFIX!r} followed by 32 lowercase hex digits"
            )
        workspace_id = None
        if self._schema_exists():
            with self._reading(f"look up workspace {uri}") as conn:
                workspace_id = _workspace_id(conn, uri)
        if workspace_id is None:
            raise WorkspaceError(
                f"workspace {uri} does not exist in database {self.where}; "
                "expected a URI returned by create_workspace (--create-new-workspace)"
            )
        return workspace_id

    def _schema_exists(self) -> bool:
        """True if the tables exist; never creates a database or a table."""
        if self._schema_ready:
            return True
        database = self._engine.url.database
        if self._dialect == "sqlite" and database and database != ":memory:":
            if not os.path.exists(database):
                return False
        with self._reading("list its tables") as conn:
            names = set(inspect(conn).get_table_names())
        self._schema_ready = {"workspaces", "workspace_entries"} <= names
        return self._schema_ready

    def _ensure_schema(self) -> None:
        """Create the tables if missing (safe when several processes race to do it)."""
        if self._schema_ready:
            return
        if self._dialect == "sqlite":
            database = self._engine.url.database
            if database and database != ":memory:":
                # The first write makes the file, as every output of the data folder is made on
                # first use (workspace_sync may run before anything else has written there).
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # WAL lets readers go on while one process writes; the mode is stored
            # in the database file, so setting it once per store is enough.
            with self._writing("switch to WAL journal mode") as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        try:
            with self._writing("create the workspace tables") as conn:
                for table in _metadata.sorted_tables:
                    conn.execute(CreateTable(table, if_not_exists=True))
        except WorkspaceError:
            # PostgreSQL can reject a concurrent CREATE TABLE IF NOT EXISTS that
            # another process won; what matters is that the tables exist now.
            if not self._schema_exists():
                raise
        self._schema_ready = True

    @contextmanager
    def _reading(self, action: str) -> Iterator[Connection]:
        """A connection that only reads; database errors become WorkspaceError."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except DBAPIError as error:
            raise WorkspaceError(
                f"workspace database {self.where}: could not {action}: {error.orig}"
            ) from error

    @contextmanager
    def _writing(self, action: str) -> Iterator[Connection]:
        """One write transaction; database errors become WorkspaceError."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except DBAPIError as error:
            raise WorkspaceError(
                f"workspace database {self.where} refused to {action}: {error.orig}"
            ) from error


def choose_workspace(
    store: WorkspaceStore,
    workspace_uri: str | None,
    create_new_workspace: bool,
    dry_run: bool,
) -> str | None:
    """Apply the ``--workspace-uri`` / ``--create-new-workspace`` rule: exactly one.

    Parameters
    ----------
    store : WorkspaceStore
        The database.
    workspace_uri : str or None
        ``-W``.
    create_new_workspace : bool
        ``--create-new-workspace``.
    dry_run : bool
        ``--dry-run``: create nothing.

    Returns
    -------
    str or None
        The workspace to sync into (checked to exist, or just created).  None
        for a dry run with ``create_new_workspace``: nothing is created, and
        every entry would be added (plan against an empty label set).

    Raises
    ------
    WorkspaceError
        If both or neither are given, or the given workspace does not exist.
    """
    if (workspace_uri is None) == (not create_new_workspace):
        raise WorkspaceError(
            f"workspace database {store.where}: pass exactly one of --workspace-uri URI "
            f"and --create-new-workspace (got workspace_uri={workspace_uri!r}, "
            f"create_new_workspace={create_new_workspace})"
        )
    if workspace_uri is not None:
        store.require_workspace(workspace_uri)
        return workspace_uri
    if dry_run:
        return None
    return store.create_workspace()


def _make_engine(db_url: str, busy_timeout_s: float) -> Engine:
    """Create the pooled engine; SQLite connections wait ``busy_timeout_s`` for locks."""
    expected = "expected e.g. 'sqlite:////abs/path/workspace.db' or 'postgresql+psycopg2://user@host:port/db'"
    try:
        url = make_url(db_url)
    except ArgumentError as error:
        raise WorkspaceError(f"workspace database URL {db_url!r} is malformed: {error}; {expected}") from None
    try:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s})
    except (ArgumentError, ImportError) as error:
        shown = url.render_as_string(hide_password=True)
        raise WorkspaceError(f"workspace database URL {shown!r} cannot be used: {error}; {expected}") from None

    @event.listens_for(engine, "connect")
    def _enable_foreign_keys(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _workspace_id(conn: Connection, uri: str) -> int | None:
    return conn.execute(
        select(workspaces_table.c.id).where(workspaces_table.c.uri == uri)
    ).scalar_one_or_none()


def _entry_row(entry: WorkspaceEntry, workspace_id: int, added_at: datetime) -> dict:
    return {
        "workspace_id": workspace_id,
        "label": entry.label,
        "kind": entry.kind,
        "uri": entry.uri,
        "study_name": entry.study_name,
        "recording_name": entry.recording_name,
        "sorter_name": entry.sorter_name,
        "details": entry.details,
        "added_at": added_at,
    }
