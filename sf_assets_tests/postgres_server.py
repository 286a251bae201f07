"""A real, throw-away PostgreSQL server for tests.

The PostgreSQL deployment is only worth something if it is tested against the
real server, so this module runs ``initdb`` and ``pg_ctl`` on a fresh data
folder, listening on 127.0.0.1 and a free port (its unix socket stays inside
the same folder), with password authentication as a real deployment has.

``initdb`` refuses to run as root: under root the server belongs to the
``postgres`` system user (created by Debian's postgresql package) and lives in
a folder of its own under the system temp folder, because pytest's own temp
folders are private to root.  A missing PostgreSQL installation fails the
test with the command that installs it; it never skips (CI sets ``CI=true``
and must see every PostgreSQL test run).

Stopping acts only on the data folder this module created (``pg_ctl stop -D``
reads the server's own pid file), so other PostgreSQL servers on the machine
are never touched, and starting again afterwards works.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

SERVER_USER = "postgres"
"""The system user that owns the server when the tests run as root."""

SUPERUSER = "sf_assets"
"""The database superuser ``initdb`` creates (password authentication)."""

_DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_INSTALL_HINT = (
    "install PostgreSQL (Debian: `apt-get install -y postgresql`, which provides "
    f"{_DEBIAN_BIN_GLOB}/initdb and the {SERVER_USER!r} user) or put its bin folder on PATH"
)
_START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed, or cannot be run from this account."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it is and how to log in.

    Attributes
    ----------
    root : Path
        The folder holding the data folder, the socket, the password file and the log.
    host : str
        Always ``127.0.0.1``.
    port : int
        The TCP port it listens on.
    user, password : str
        The superuser and its password.
    """

    root: Path
    host: str
    port: int
    user: str
    password: str

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL for ``database`` on this server, password included."""
        return sa.URL.create(
            driver, username=self.user, password=self.password, host=self.host, port=self.port, database=database
        ).render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (it must not exist yet) and return its SQLAlchemy URL."""
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def dagster_env(self, database: str) -> dict[str, str]:
        """The ``SF_ASSETS_PG_*`` variables that deployments/postgres/dagster.yaml reads."""
        return {
            "SF_ASSETS_PG_HOST": self.host,
            "SF_ASSETS_PG_PORT": str(self.port),
            "SF_ASSETS_PG_USER": self.user,
            "SF_ASSETS_PG_PASSWORD": self.password,
            "SF_ASSETS_PG_DB": database,
        }

    def postmaster_pid(self) -> int | None:
        """The server's process id from its pid file, or None once it has stopped."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None


def find_postgres_bin(search_path: str | None = None, debian_glob: str = _DEBIAN_BIN_GLOB) -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Parameters
    ----------
    search_path : str or None
        Folders to look in first, as in PATH (default: the PATH variable).
    debian_glob : str
        Where Debian installs the server programs; the newest version wins.

    Raises
    ------
    PostgresUnavailable
        If no folder holds all three programs.
    """
    candidates = []
    on_path = shutil.which("initdb", path=search_path)
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(Path("/").glob(debian_glob.lstrip("/")), key=lambda p: _version_key(p.parent.name))
    candidates.extend(reversed(debian))
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresUnavailable(
        f"PostgreSQL server programs (initdb, pg_ctl, postgres) not found on PATH nor in {debian_glob}: "
        + _INSTALL_HINT
    )


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a fresh server, yield it, then stop it and delete its folder.

    Raises
    ------
    PostgresUnavailable
        If PostgreSQL is missing, or the tests run as root and no ``postgres`` user exists.
    RuntimeError
        If ``initdb`` or ``pg_ctl start`` fails (the message carries the server log).
    """
    bin_dir = find_postgres_bin()
    owner = _server_owner()
    root = Path(tempfile.mkdtemp(prefix="sf-assets-pg-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        password = secrets.token_hex(16)
        pw_file = root / "password"
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        if owner is not None:
            os.chown(pw_file, owner.pw_uid, owner.pw_gid)
        _run_as(
            owner,
            [
                str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, f"--pwfile={pw_file}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync",
            ],
            f"initdb in {root / 'data'}",
        )
        pw_file.unlink()
        yield _start(bin_dir, owner, root, password)
    finally:
        # Also after a start that timed out: a server may be up even though pg_ctl gave up.
        _stop(bin_dir, owner, root / "data")
        shutil.rmtree(root, ignore_errors=True)


def _start(bin_dir: Path, owner: pwd.struct_passwd | None, root: Path, password: str) -> PostgresServer:
    """Start the server on a free port; another process may grab the port first, so retry."""
    last_error = None
    for _attempt in range(3):
        server = PostgresServer(root=root, host="127.0.0.1", port=_free_port(), user=SUPERUSER, password=password)
        options = " ".join(
            [
                f"-p {server.port}",
                f"-k {root}",
                "-c listen_addresses=127.0.0.1",
                # A test server: durability buys nothing and costs seconds.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        try:
            _run_as(
                owner,
                [
                    str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_path),
                    "-o", options, "-w", "-t", str(_START_TIMEOUT_S), "start",
                ],
                f"pg_ctl start on 127.0.0.1:{server.port}",
                log_path=server.log_path,
            )
            return server
        except RuntimeError as error:
            last_error = error
            if "already in use" not in _read(server.log_path):
                raise
    raise RuntimeError(f"PostgreSQL could not find a free port after 3 attempts: {last_error}")


def _stop(bin_dir: Path, owner: pwd.struct_passwd | None, data_dir: Path) -> None:
    """Stop the server of ``data_dir``, if it runs, and wait for it to exit.

    A fast shutdown rolls back open sessions; if that hangs, an immediate one.
    """
    if not (data_dir / "postmaster.pid").exists():
        return
    for mode in ("fast", "immediate"):
        try:
            _run_as(
                owner,
                [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "-t", "30", "stop"],
                f"pg_ctl stop -m {mode} in {data_dir}",
            )
            return
        except RuntimeError:
            if mode == "immediate":
                raise


def _server_owner() -> pwd.struct_passwd | None:
    """None when the current user may run the server; the ``postgres`` user under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and initdb refuses root; no {SERVER_USER!r} system user to run the "
            f"server as: {_INSTALL_HINT}"
        ) from None


def _run_as(owner: pwd.struct_passwd | None, command: list[str], action: str, log_path: Path | None = None) -> None:
    if owner is not None:
        command = ["runuser", "-u", owner.pw_name, "--", *command]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=_START_TIMEOUT_S + 30)
    if done.returncode != 0:
        log = f"\nserver log {log_path}:\n{_read(log_path)}" if log_path else ""
        raise RuntimeError(
            f"{action} failed (exit {done.returncode} after {time.monotonic() - started:.1f} s): "
            f"{' '.join(command)}\n{done.stdout}{done.stderr}{log}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read(path: Path | None) -> str:
    try:
        return path.read_text() if path else ""
    except OSError:
        return ""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())
