"""Every raw SQL statement of the judging hot path (claim, submit, progress, the per-request
project and user lookups), on PostgreSQL and SQLite. Nothing outside this package writes SQL.

The ORM costs about 0.9 ms of CPU to build and compile one query on this project's machine,
a plain statement about 0.1 ms; an annotator's submit-and-next runs some fifteen statements,
so the path the load target is measured on speaks SQL. On PostgreSQL the statements are
prepared once per connection (psycopg's server-side binding), which also spares the server
planning them again, and planned with sequential scans off (see `_execute_index_planned`).
Everything else in the app stays on the ORM.

How to use it: call the named statements of the modules here (`sql.queue`, `sql.judgments`,
`sql.pairs`, `sql.access`, `sql.progress`), never SQL text; a transaction that runs them
opens with `sql.atomic()` (Django's atomic block, and the plans this package needs whatever
ran first in it). A statement outside a transaction runs in one of its own.

SQL here is written once for both databases: `%s` placeholders, `ON CONFLICT` upserts,
booleans compared as values, timestamps passed through `timestamp()`. Consecutive writes go
through `batch()`: one round trip for all of them on PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from django.contrib.auth.models import User as UserModel
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction

from annotate.models import (
    Comparison,
    Guideline,
    Judgment,
    Lease,
    Membership,
    PreferencePair,
    Project,
    Prompt,
    Response,
)

COMPARISON = Comparison._meta.db_table
GUIDELINE = Guideline._meta.db_table
JUDGMENT = Judgment._meta.db_table
LEASE = Lease._meta.db_table
MEMBERSHIP = Membership._meta.db_table
PREFERENCE_PAIR = PreferencePair._meta.db_table
PROJECT = Project._meta.db_table
PROMPT = Prompt._meta.db_table
RESPONSE = Response._meta.db_table
USER = UserModel._meta.db_table


_VENDOR: list[str] = []


def is_postgres() -> bool:
    # The engine is fixed for the process; asking the connection proxy costs a lookup each time.
    if not _VENDOR:
        _VENDOR.append(connection.vendor)
    return _VENDOR[0] == "postgresql"


def for_update(*, skip_locked: bool = False, of: str = "") -> str:
    """The row-locking clause on PostgreSQL; on SQLite the write transaction serialises."""
    if not is_postgres():
        return ""
    clause = " FOR UPDATE" + (f" OF {of}" if of else "")
    return clause + (" SKIP LOCKED" if skip_locked else "")


def timestamp(value: datetime) -> Any:
    """A datetime as this database stores it (SQLite keeps naive UTC text)."""
    return connection.ops.adapt_datetimefield_value(value)


# Sequential scans off until the transaction ends (see _execute_index_planned); JIT too: a
# plan left with a sequential scan carries its 1e10 penalty cost, far past jit_above_cost,
# and would be compiled at each execution.
_INDEX_PLANS = "SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"


def _execute(sql: str, params: Sequence[Any]) -> Any:
    # The connection once: each use of the `connection` proxy is a thread-local lookup.
    db = connections[DEFAULT_DB_ALIAS]
    if is_postgres():
        if db.connection is None:
            db.ensure_connection()
        # A server-binding cursor on Django's own connection (so inside its transactions);
        # prepare=True keeps the parsed and planned statement for the connection's lifetime.
        prepared = psycopg.Cursor(db.connection)
        with db.wrap_database_errors:
            _execute_index_planned(db.connection, prepared, sql, params)
        return prepared
    cursor = db.cursor()
    cursor.execute(sql, params)
    return cursor


def _execute_index_planned(
    pg: psycopg.Connection[Any], prepared: psycopg.Cursor[Any], sql: str, params: Sequence[Any]
) -> None:
    """Run a statement of this package planned with sequential scans off.

    A prepared statement keeps the generic plan PostgreSQL makes at about its sixth
    execution on the connection, until the connection closes or an ANALYZE of its tables
    invalidates it. Made while the lease and judgment tables held a few dozen rows (a new
    project, a server without autovacuum, as CI's), that plan reads them whole, and keeps
    doing so as they grow: each walk of the queue then scans every lease (measured: 1.6 ms
    a walk after 600 judgments, 6.3 ms after 1800; docs/benchmarks.md). Every statement
    here is shaped for its indexes, so the planner is told to take them whatever the
    tables' size, in the transactions that run this package's statements (SET LOCAL ends
    with the transaction): the ORM's own (lead pages, exports, statistics) keep their plans.

    The setting rides in the round trip of the transaction's first statement of this
    package: the first statement of the transaction, or the first after `atomic()` opened it
    (the ORM may have gone first). Outside Django's transactions the statement runs in a
    BEGIN ... COMMIT of its own, in one round trip too.
    """
    db = connections[DEFAULT_DB_ALIAS]
    if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        if not getattr(db, _PLANS_PENDING, False):
            prepared.execute(sql, params, prepare=True)
            return
        setattr(db, _PLANS_PENDING, False)
        with pg.pipeline():
            pg.execute(_INDEX_PLANS)
            prepared.execute(sql, params, prepare=True)
        return
    setattr(db, _PLANS_PENDING, False)
    if not pg.autocommit:
        with pg.pipeline():
            pg.execute(_INDEX_PLANS)  # psycopg sends the BEGIN before it
            prepared.execute(sql, params, prepare=True)
        return
    try:
        with pg.pipeline():
            pg.execute("BEGIN")
            pg.execute(_INDEX_PLANS)
            prepared.execute(sql, params, prepare=True)
            pg.execute("COMMIT")
    except psycopg.Error:
        # The failed statement left the explicit transaction open (aborted): end it.
        if _aborted(pg):
            pg.execute("ROLLBACK")
        raise


def _aborted(pg: psycopg.Connection[Any]) -> bool:
    return pg.info.transaction_status == psycopg.pq.TransactionStatus.INERROR


# Set on the connection by `atomic()` until the next statement of this package sends the plans.
_PLANS_PENDING = "_prefloop_index_plans_pending"


@contextlib.contextmanager
def atomic() -> Iterator[None]:
    """A transaction of the judging path: Django's atomic block, in which this package's
    statements are planned with sequential scans off even when the ORM's statements run
    first (see `_execute_index_planned`). Nested in another transaction, a savepoint."""
    with transaction.atomic():
        db = connections[DEFAULT_DB_ALIAS]
        setattr(db, _PLANS_PENDING, is_postgres())
        try:
            yield
        finally:
            setattr(db, _PLANS_PENDING, False)


def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    cursor = _execute(sql, params)
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()


def one(sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    cursor = _execute(sql, params)
    try:
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row
    finally:
        cursor.close()


def execute(sql: str, params: Sequence[Any] = ()) -> int:
    """Run a write; the number of rows it touched."""
    cursor = _execute(sql, params)
    try:
        return int(cursor.rowcount)
    finally:
        cursor.close()


def batch(statements: Sequence[tuple[str, Sequence[Any]]]) -> tuple[Any, ...] | None:
    """Run writes in order, as one round trip on PostgreSQL (psycopg's pipeline mode: each
    is sent without waiting for the one before to answer). For statements whose answers
    nothing between them depends on; an error in one skips the rest and is raised at the end.
    Returns the first row of the last statement's result (its RETURNING), or None."""
    db = connections[DEFAULT_DB_ALIAS]
    pipelined: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if is_postgres():
        if db.connection is None:
            db.ensure_connection()
        pipelined = db.connection.pipeline()
    cursors: list[Any] = []
    try:
        # The pipeline raises a statement's error when it ends, outside _execute's wrapping.
        with db.wrap_database_errors, pipelined:
            for sql, params in statements:
                cursors.append(_execute(sql, params))
        last = cursors[-1]
        return last.fetchone() if last.description else None
    finally:
        for cursor in cursors:
            cursor.close()


M = TypeVar("M", bound=models.Model)


def columns(model: type[models.Model], alias: str) -> str:
    """Every concrete column of `model`, in field order, for `instance(model, row)`."""
    return ", ".join(f"{alias}.{f.column}" for f in model._meta.concrete_fields)


def instance(model: type[M], values: dict[str, Any] | Sequence[Any]) -> M:
    """A model instance from the columns a statement read: by attname (the fields not read are
    deferred, loaded on first access), or every concrete field in order (see `columns`).
    Values pass through the converters the ORM would apply (JSON, SQLite's 0/1 booleans and
    text timestamps), so the instance is the one a queryset would give."""
    converters = _converters(model)
    if not isinstance(values, dict):
        names = list(converters)
        row = list(values)
    else:
        names = [name for name in converters if name in values]
        row = [values[name] for name in names]
    db = connections[DEFAULT_DB_ALIAS]
    for i, name in enumerate(names):
        if row[i] is not None:
            for converter, expression in converters[name]:
                row[i] = converter(row[i], expression, db)
    return model.from_db("default", names, row)


_CONVERTERS: dict[type[models.Model], dict[str, list[tuple[Any, Any]]]] = {}


def _converters(model: type[models.Model]) -> dict[str, list[tuple[Any, Any]]]:
    """attname -> the ORM's converters for it, in concrete field order (one engine a process)."""
    if model not in _CONVERTERS:
        table = {}
        for field in model._meta.concrete_fields:
            expression = field.get_col(model._meta.db_table)
            found = connection.ops.get_db_converters(expression)
            found += field.get_db_converters(connection)
            table[field.attname] = [(converter, expression) for converter in found]
        _CONVERTERS[model] = table
    return _CONVERTERS[model]
