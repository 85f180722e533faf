"""The event store, chosen by one setting: ``sqlite:///path`` (the embedded default) or
``postgresql://user@host:port/db``.

eventsourcing creates its tables from every process at start-up, and on PostgreSQL concurrent
DDL races (``tuple concurrently updated``). We serialise schema creation across processes with
a PostgreSQL advisory lock, so several replicas starting at once on an empty database all come
up; the tables are created once and the others find them.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# The recorders that also write the tamper-evident chain (see orchestrator.audit.chain)...
RECORDER_TOPICS = {
    "sqlite": "orchestrator.audit.chain:ChainedSQLiteRecorder",
    "postgres": "orchestrator.audit.chain:ChainedPostgresRecorder",
}
# ...and the same, their concurrent saves sharing transactions (orchestrator.batching): the
# default. PAYORCH_GROUP_COMMIT=off writes every save in its own transaction.
GROUP_COMMIT_TOPICS = {
    "sqlite": "orchestrator.batching:GroupCommitSQLiteRecorder",
    "postgres": "orchestrator.batching:GroupCommitPostgresRecorder",
}
GROUP_COMMIT_VARIABLE = "PAYORCH_GROUP_COMMIT"

DEFAULT_DATABASE_URL = "sqlite:///payorch.db"
# Any constant will do: it names "payorch schema creation" among advisory locks.
_DDL_LOCK_KEY = 0x7061796F7263  # "payorc"


@dataclass(frozen=True)
class StoreConfig:
    kind: str  # "sqlite" or "postgres"
    env: dict[str, str]  # eventsourcing's settings
    display: str  # the URL without its password, for logs
    conninfo: dict[str, str]  # libpq keywords (postgres only)


def parse_database_url(
    url: str, *, pool_size: int = 8, max_overflow: int = 24, group_commit: bool | None = None
) -> StoreConfig:
    """``group_commit`` None: from PAYORCH_GROUP_COMMIT (on unless ``off``, ``0``, ``false``
    or ``no``)."""
    if group_commit is None:
        group_commit = group_commit_from_env()
    topics = GROUP_COMMIT_TOPICS if group_commit else RECORDER_TOPICS
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ValueError("an sqlite URL needs a path: sqlite:///payorch.db")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "PROCESS_RECORDER_TOPIC": topics["sqlite"],
        }
        return StoreConfig("sqlite", env, f"sqlite:///{path}", {})
    if parts.scheme in ("postgresql", "postgres"):
        dbname = unquote(parts.path.lstrip("/")) or "postgres"
        user = unquote(parts.username or "") or os.environ.get("PGUSER", "postgres")
        password = _postgres_password(unquote(parts.password or ""))
        host = parts.hostname or "127.0.0.1"
        port = str(parts.port or 5432)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": host,
            "POSTGRES_PORT": port,
            "POSTGRES_USER": user,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_SCHEMA": query.get("schema", "public"),
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(max_overflow),
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_PRE_PING": "y",
            "PROCESS_RECORDER_TOPIC": topics["postgres"],
            # Its insert function bypasses the recorder that writes the audit chain.
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        }
        conninfo = {"dbname": dbname, "host": host, "port": port, "user": user}
        if password:
            conninfo["password"] = password
        display = f"postgresql://{user}@{host}:{port}/{dbname}"
        return StoreConfig("postgres", env, display, conninfo)
    raise ValueError(
        f"unsupported database URL scheme {parts.scheme!r}: use sqlite:///path or postgresql://..."
    )


def group_commit_from_env() -> bool:
    value = os.environ.get(GROUP_COMMIT_VARIABLE, "on").strip().lower()
    if value in ("on", "1", "true", "yes", ""):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"{GROUP_COMMIT_VARIABLE} is on or off, not {value!r}")


def _postgres_password(from_url: str) -> str:
    """The password comes from the URL, PAYORCH_DATABASE_PASSWORD_FILE (a secret file) or
    PGPASSWORD, in that order; it is never logged."""
    if from_url:
        return from_url
    secret_file = os.environ.get("PAYORCH_DATABASE_PASSWORD_FILE")
    if secret_file:
        return Path(secret_file).read_text().strip()
    return os.environ.get("PGPASSWORD", "")


@contextlib.contextmanager
def schema_lock(config: StoreConfig) -> Iterator[None]:
    """Held while the application creates its tables; a no-op on SQLite, whose own locking
    already serialises DDL."""
    if config.kind != "postgres":
        yield
        return
    import psycopg  # only PostgreSQL needs it

    with psycopg.connect(**config.conninfo, autocommit=True, connect_timeout=10) as conn:  # type: ignore[arg-type]
        conn.execute("SELECT pg_advisory_lock(%s)", (_DDL_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_DDL_LOCK_KEY,))


def check_only_when_suspect(pool: Any) -> None:
    """Makes the pool's check of each connection it hands out (``POSTGRES_PRE_PING``) cost a
    round trip only when the connection looks broken, and recover from a database restart
    at once rather than one dead connection at a time.

    eventsourcing's pre-ping runs an empty query on every checkout: a round trip per read or
    write (a quarter of the webhook consumer's time). A healthy idle connection has nothing
    to read; one whose backend is gone (a restart, ``pg_terminate_backend``, an idle timeout)
    has the server's goodbye or EOF waiting on its socket. So the socket is polled (no round
    trip), and pinged only when readable. A ping that fails means the others are likely dead
    too: the whole pool is checked then (``pool.check()``), so the caller's next attempt gets
    a new connection, where psycopg_pool alone would hand out the dead ones one by one, with
    a growing back-off between them (over 10 s for a pool of 8 after a restart)."""
    import psycopg_pool  # only PostgreSQL needs it

    ping = psycopg_pool.ConnectionPool.check_connection
    if getattr(pool, "_check", None) is not ping:
        return  # no pre-ping asked for: nothing to make cheaper

    def check(conn: Any) -> None:
        if not _readable(conn):
            return
        try:
            ping(conn)
        except Exception:
            pool.check()  # replaces every dead connection of the pool, now
            raise

    pool._check = check  # psycopg_pool has no setter for it


def without_jit(pool: Any) -> None:
    """Turns PostgreSQL's JIT compilation off on every connection the pool opens.

    payorch's queries are short index lookups; JIT only ever compiles one when the planner's
    estimate is inflated, as on a table whose statistics are stale (a new or restored
    database, within autovacuum's first minute), and then costs more than the query: the
    consumer's page read took 89 ms with JIT against 0.2 ms without (EXPLAIN ANALYZE,
    20,900 events). A ``SET`` after connecting, like eventsourcing's own settings, rather
    than a startup option, which a connection pooler may refuse."""
    configure = pool._configure  # eventsourcing's: autocommit, idle-in-transaction timeout

    def configure_without_jit(conn: Any) -> None:
        if configure is not None:
            configure(conn)
        conn.execute("SET jit = off")

    pool._configure = configure_without_jit  # psycopg_pool has no setter for it


def _readable(conn: Any) -> bool:
    """Whether an idle connection has something to read (or is closed): a sign of trouble."""
    if conn.closed:
        return True
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    return bool(readable)
