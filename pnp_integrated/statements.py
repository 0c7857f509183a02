"""Plain statements: the device path's hot statements run on the DBAPI connection of the session's transaction.

An execution through SQLAlchemy's ``Connection`` costs about 250 Python calls (the statement's cache key, an
execution context, the result machinery) for what the driver does in a handful, and a device request runs about
five. A :class:`PlainStatement` is a Core statement compiled once per dialect and set of parameter names, keeping
what the compiled form needs: its SQL with positional markers, the order of its parameters, the types' bind and
result processors, and the columns' Python-side ``default`` and ``onupdate`` values (which SQLAlchemy would fill in
at execution). It runs in the same transaction as the session's other statements, so a device request is still one
transaction, and a failure goes through SQLAlchemy's own handling: callers see the same exceptions
(``OperationalError``, ``IntegrityError`` ...) and a connection the server dropped is invalidated as after any
statement. The SQL is the one SQLAlchemy renders for the dialect (``FOR UPDATE``, PostgreSQL's casts, RETURNING),
on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

from .models import db

# Key in ``Session.info``: the SQLAlchemy connection of the session's transaction, forgotten when it ends.
TRANSACTION_CONNECTION = "pnp_transaction_connection"
_NAMED_MARKER = re.compile(r"%\(([^)]+)\)s")  # pyformat (psycopg): rewritten to positional %s

Processor = Callable[[Any], Any]


class OwnTransaction:
    """A transaction on a pooled connection of its own, outside the ORM session (see :func:`own_transaction`)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.info: dict[str, Any] = {}  # what the transaction's statements leave for its hooks (the outbox's mark)


_OWN: ContextVar[OwnTransaction | None] = ContextVar("pnp_own_transaction", default=None)
# Called after an own transaction committed; registered once per process at import, as SQLAlchemy's events are. The
# transaction is committed already: a hook must not raise.
AFTER_OWN_COMMIT: list[Callable[[OwnTransaction], None]] = []


def transaction_info() -> dict[str, Any]:
    """The ``info`` of the current transaction: the own transaction's, else the session's."""
    own = _OWN.get()
    return own.info if own is not None else db.session.info


def _session_in_transaction() -> bool:
    """Whether the current ORM session has a transaction in progress (a caller's reads or writes belong to it)."""
    registry = db.session.registry
    return bool(registry.has() and registry().in_transaction())


@contextmanager
def own_transaction() -> Iterator[OwnTransaction]:
    """Run the block in a transaction on a connection of its own, committed at its end and rolled back when it
    raises; the plain statements of the block run in it.

    No ORM session is involved: creating, committing and closing one costs more than a device request's statements.
    """
    connection = db.engine.connect()
    try:
        connection.begin()  # SQLAlchemy commits only a transaction it began; the statements bypass its autobegin
        own = OwnTransaction(connection)
        token = _OWN.set(own)
        try:
            yield own
        finally:
            _OWN.reset(token)
        connection.commit()
    finally:
        connection.close()  # what was not committed is rolled back; the connection goes back to the pool
    for hook in AFTER_OWN_COMMIT:
        hook(own)


@contextmanager
def unit_of_work() -> Iterator[None]:
    """Run the block in one transaction, committed at its end and rolled back when it raises: a transaction of its
    own (:func:`own_transaction`), or the session's one in progress, as a caller's reads and writes belong to it."""
    if not _session_in_transaction():
        with own_transaction():
            yield
        return
    try:
        yield
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def transaction_connection() -> Connection:
    """The connection of the current transaction: the own transaction's, else the session's (begun if there is
    none, looked up once per transaction)."""
    own = _OWN.get()
    if own is not None:
        return own.connection
    session = db.session()
    connection: Connection | None = session.info.get(TRANSACTION_CONNECTION)
    if connection is None:
        connection = session.connection()
        session.info[TRANSACTION_CONNECTION] = connection
    return connection


def _forget_connection(session: Session, _transaction: Any) -> None:
    session.info.pop(TRANSACTION_CONNECTION, None)


event.listen(db.session, "after_transaction_end", _forget_connection)


def _value_of(default: Any) -> Callable[[], Any]:
    """A column's Python-side ``default`` or ``onupdate`` as a call (SQLAlchemy wraps callables to take a context)."""
    if default.is_callable:
        return lambda: default.arg(None)
    if default.is_scalar:
        value = default.arg
        return lambda: value
    raise ValueError(f"a plain statement cannot fill in a {type(default).__name__}")


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Per positional parameter: its name, how to get its value when the caller gives none, its bind processor.
    parameters: tuple[tuple[str, Callable[[], Any] | None, Processor | None], ...]
    results: tuple[tuple[int, Processor], ...]  # the result columns that need processing, by position

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, fill, process in self.parameters:
            value = params[name] if name in params or fill is None else fill()
            out.append(value if process is None or value is None else process(value))
        return out

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not self.results:
            return tuple(raw)
        row = list(raw)
        for at, process in self.results:
            if row[at] is not None:
                row[at] = process(row[at])
        return tuple(row)


def _compile(statement: ClauseElement, dialect: Dialect, keys: Sequence[str]) -> _Compiled:
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
    if getattr(compiled, "literal_execute_params", None) or getattr(compiled, "post_compile_params", None):
        raise ValueError("a plain statement cannot expand its parameters at execution")
    sql = compiled.string
    if compiled.positiontup is not None:
        names = list(compiled.positiontup)
    else:
        names = _NAMED_MARKER.findall(sql)
        sql = _NAMED_MARKER.sub("%s", sql)
    prefetch: dict[str, Callable[[], Any]] = {}
    for column in compiled.insert_prefetch:
        prefetch[column.key] = _value_of(column.default)
    for column in compiled.update_prefetch:
        prefetch[column.key] = _value_of(column.onupdate)
    parameters = []
    for name in names:
        bind = compiled.binds[name]
        fill = prefetch.get(name)
        if fill is None and name not in keys and bind.value is not None:
            literal = bind.effective_value
            fill = lambda literal=literal: literal  # noqa: E731 - a constant of the statement (``state = 'started'``)
        parameters.append((name, fill, bind.type.dialect_impl(dialect).bind_processor(dialect)))
    columns: Sequence[Column[Any]] = list(getattr(statement, "exported_columns", ()) or ())
    processors = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]
    results = tuple((at, process) for at, process in enumerate(processors) if process is not None)
    return _Compiled(sql, tuple(parameters), results)


class PlainStatement:
    """A Core statement run on the DBAPI connection; build it once (module level), run it with a dict of parameters.

    For an INSERT or UPDATE the names of the parameters are the columns set, as with ``Connection.execute``: each set
    of names compiles once.
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            found = self._compiled[(dialect.name, keys)] = _compile(self.statement, dialect, keys)
        return found

    def _run(self, params: Mapping[str, Any]) -> tuple[Any, _Compiled]:
        connection = transaction_connection()
        compiled = self._for(connection.dialect, tuple(params))
        arguments = compiled.arguments(params)
        cursor = None
        try:
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(compiled.sql, arguments)
        except BaseException as exc:
            # SQLAlchemy's own handling of a failed execution: the same wrapped exceptions, and the connection (and
            # the pool's older ones) invalidated when the server is gone.
            connection._handle_dbapi_exception(exc, compiled.sql, arguments, cursor, None)
        return cursor, compiled

    def run(self, params: Mapping[str, Any]) -> None:
        """Run it, for its effect."""
        cursor, _compiled = self._run(params)
        cursor.close()

    def rowcount(self, params: Mapping[str, Any]) -> int:
        """Run it; the number of rows it matched (an UPDATE's compare-and-set reads 1 or 0)."""
        cursor, _compiled = self._run(params)
        count = int(cursor.rowcount)
        cursor.close()
        return count

    def first(self, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run it; its first row (the selected or returned columns, processed as SQLAlchemy would), or ``None``."""
        cursor, compiled = self._run(params)
        raw = cursor.fetchone()
        cursor.close()
        return None if raw is None else compiled.row(raw)

    def all(self, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run it; every row."""
        cursor, compiled = self._run(params)
        rows = cursor.fetchall()
        cursor.close()
        return [compiled.row(raw) for raw in rows]


def dbapi_connection() -> Any:
    """The DBAPI connection of the session's transaction (SQLite's ``BEGIN IMMEDIATE`` goes there)."""
    return transaction_connection().connection.dbapi_connection


def dialect_name() -> str:
    return transaction_connection().dialect.name
