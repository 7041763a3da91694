"""One Celery beat in the whole cluster: it runs while its host holds a database lock.

Every host of the ``workers`` group runs ``manage.py beat``; each asks PostgreSQL for one
session-level advisory lock, and the one that gets it starts ``celery beat`` as its child.
The others ask again every ``poll`` seconds. The leader checks its lock's connection on the
same beat: when the connection fails (the database failed over, the network went away, an
admin ended the session) the lock is gone, so it stops its beat at once and becomes a
candidate again. A leader that dies takes its beat with it (the child is told by the kernel)
and its session, and so its lock, ends with the process.

The database is what the cluster already runs and already fails over; a beat that ran twice
for a moment (between a lost connection and its check) does no harm, because every beat job
is safe to run twice (guarded updates and unique keys, as every task).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int, int): the panel's namespace, then the beat's key.
LOCK = (0x70616E6C, 1)
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,  # ms: an unanswered write ends the connection too
    "connect_timeout": 5,
}
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: the kernel sends it SIGTERM when the leader dies (even by SIGKILL)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def beat_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "panel", "beat", *args]


class Leader:
    """The loop of one candidate; ``stop`` ends it (and its beat) from a signal handler."""

    def __init__(self, args: list[str], *, poll: float) -> None:
        self.args = args
        self.poll = poll
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def run(self) -> int:
        db = connections.create_connection(DEFAULT_DB_ALIAS)
        if db.vendor != "postgresql":
            # One host (the demo, SQLite): nothing to elect.
            log.info("beat: one host, no election")
            return self._beat_until_done()
        while not self.stopping.is_set():
            pg = self._lock(db)
            if pg is None:
                self.stopping.wait(self.poll)
                continue
            try:
                code = self._lead(pg)
            finally:
                pg.close()
            if code is not None:
                return code
        return 0

    def _lock(self, db: Any) -> Any:
        try:
            pg = db.get_new_connection({**db.get_connection_params(), **KEEPALIVES})
            pg.autocommit = True
            got = pg.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK).fetchone()[0]
        except Exception as exc:
            log.warning("beat: the database does not answer (%s); asking again", exc)
            return None
        if not got:
            pg.close()
            log.debug("beat: another host leads")
            return None
        return pg

    def _lead(self, pg: Any) -> int | None:
        """Run beat while the lock holds; its exit code if it ended by itself, else None."""
        log.warning("beat: leading (pid %d); starting celery beat", os.getpid())
        self.child = subprocess.Popen(  # noqa: S603  (this Python, celery, the given arguments)
            beat_command(self.args), preexec_fn=_die_with_parent
        )
        try:
            while not self.stopping.wait(self.poll):
                if self.child.poll() is not None:
                    log.warning("beat: celery beat ended (%s)", self.child.returncode)
                    return self.child.returncode
                try:
                    pg.execute("SELECT 1")
                except Exception as exc:
                    log.warning("beat: lost the lock's connection (%s); stopping beat", exc)
                    return None
            return 0
        finally:
            self._end_child()

    def _beat_until_done(self) -> int:
        self.child = subprocess.Popen(  # noqa: S603  (this Python, celery, the given arguments)
            beat_command(self.args), preexec_fn=_die_with_parent
        )
        while not self.stopping.wait(self.poll):
            if self.child.poll() is not None:
                return self.child.returncode
        self._end_child()
        return 0

    def _end_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
