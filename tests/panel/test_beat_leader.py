"""One beat in the whole cluster (issue 16, item 4): two hosts' `manage.py beat` against one
database; one leads, the other takes over when the leader dies or loses its connection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.conftest import delete_queue

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


class Candidate:
    """One host's `manage.py beat`, its log read as it comes."""

    def __init__(self, env: dict[str, str], schedule: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "beat", "--poll", "0.5", "--", "--schedule",
             str(schedule), "--pidfile="],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def leads(self) -> int:
        return sum("beat: leading" in line for line in self.lines)

    def beats(self) -> list[int]:
        """The pids of celery beat processes that are this candidate's children."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(pid) for pid in out.split()]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_one_beat_leads_and_another_takes_over_when_it_dies_or_loses_its_lock(tmp_path):
    db = connection.settings_dict
    queue = f"beat-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "LOG_LEVEL": "WARNING",
    }
    first = Candidate(env, tmp_path / "one")
    second = Candidate(env, tmp_path / "two")
    candidates = [first, second]
    try:
        wait_for(lambda: first.leads() + second.leads() == 1, 30, "nobody leads")
        time.sleep(2)  # the other keeps asking, and keeps being refused
        assert first.leads() + second.leads() == 1
        leader, other = (first, second) if first.leads() else (second, first)
        wait_for(lambda: len(leader.beats()) == 1, 20, "the leader runs no beat")
        assert other.beats() == []
        [beat] = leader.beats()

        # Its lock's session ended by the database (a failover does that): it stops its beat
        # and one of them leads again, with one beat.
        with psycopg.connect(
            host=db["HOST"],
            port=db["PORT"],
            user=db["USER"],
            password=db["PASSWORD"],
            dbname=db["NAME"],
            autocommit=True,
        ) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND classid = %s AND objid = %s",
                [0x70616E6C, 1],
            )
        wait_for(lambda: not alive(beat), 20, "the beat of a leader without its lock goes on")
        wait_for(lambda: first.leads() + second.leads() == 2, 30, "nobody leads again")
        wait_for(lambda: len(first.beats() + second.beats()) == 1, 20, "not one beat")
        leader = first if first.beats() else second
        other = second if leader is first else first
        [beat] = leader.beats()

        # The leader killed outright: its beat goes with it, the other takes over.
        os.kill(leader.proc.pid, signal.SIGKILL)
        leader.proc.wait(10)
        wait_for(lambda: not alive(beat), 20, "the beat of a dead leader goes on")
        wait_for(lambda: len(other.beats()) == 1, 30, "the other does not take over")
        assert "Traceback" not in "".join(other.lines)
    finally:
        for candidate in candidates:
            if candidate.proc.poll() is None:
                candidate.proc.send_signal(signal.SIGTERM)
                candidate.proc.wait(30)
        delete_queue(queue)
