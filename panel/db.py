"""A cursor for the few statements on the path of every phone call.

Django's psycopg backend binds parameters on the client (each value quoted into the SQL text
in Python) and never prepares a statement, so PostgreSQL parses and plans the whole text
every time. For the statements run on every call setup and hangup, planning alone took three
times as long as running them. On PostgreSQL this cursor sends the values apart from the
text and prepares each statement on its first use; the plan is kept for the life of the
connection (the FastAGI server keeps its connections). Prepared statements do not survive a
pooler in transaction mode (PgBouncer); the panel connects to PostgreSQL directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


@contextlib.contextmanager
def bound_cursor() -> Iterator[Any]:
    """A cursor that prepares its statements on PostgreSQL; Django's own cursor elsewhere.

    It is wrapped as Django wraps its cursors (execute wrappers, the query log in DEBUG, the
    broken-transaction check, Django's exceptions) and is part of the caller's transaction.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the proxy `connection` costs a lookup per use
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            yield cursor
        return
    db.ensure_connection()
    pg = db.connection
    if pg.prepare_threshold is None:
        # Django's default, which turns preparing off altogether. A threshold never reached
        # leaves every other statement unprepared and lets this cursor's be prepared.
        pg.prepare_threshold = 2**31
    statements = getattr(db, "_panel_statements", None)
    if statements is None or statements.pg is not pg:
        statements = _Statements(pg)
        db._panel_statements = statements  # type: ignore[attr-defined]
    db.validate_thread_sharing()
    wrapper = CursorDebugWrapper if db.queries_logged else CursorWrapper
    with wrapper(statements, db) as cursor:
        yield cursor


class _Statements:
    """What Django's cursor wrapper wraps: a psycopg cursor per statement text, kept.

    One thread uses a connection at a time, so one "current" cursor answers the fetches
    after an execute. Closing does nothing: the cursors go with their connection.
    """

    LIMIT = 64  # statement texts are a handful of constants; this only bounds a mistake

    def __init__(self, pg: Any) -> None:
        self.pg = pg
        self.cursors: dict[str, Any] = {}
        self.current: Any = None

    def execute(self, query: str, params: Any = None) -> Any:
        cursor = self.cursors.get(query)
        if cursor is None:
            if len(self.cursors) >= self.LIMIT:
                self.cursors.clear()
            cursor = self.cursors[query] = _prepared_cursor_class()(self.pg)
        self.current = cursor
        return cursor.execute(query, params)

    def close(self) -> None:
        pass

    def __iter__(self) -> Any:
        return iter(self.current)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


_CLASSES: list[type] = []


def _prepared_cursor_class() -> type:
    if not _CLASSES:
        import psycopg

        class PreparedCursor(psycopg.Cursor):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                kwargs.setdefault("prepare", True)
                return super().execute(query, params, **kwargs)

        _CLASSES.append(PreparedCursor)
    return _CLASSES[0]
