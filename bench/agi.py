"""Benchmark of the telephony issue: call setups against one FastAGI server process.

Creates a throw-away PostgreSQL database, imports a 200,000-prefix deck (timed), makes members
with verified phones and credit, starts ``manage.py fastagi`` as its own process, and drives
it with simulated Asterisk connections (the caller keys in at once): authorize (access number,
caller ID, node), then, for calls authorized, settle (DIALSTATUS, answer and end epochs, the
trunk tried, the SETTLE_TOKEN the authorize gave), as the dialplan's hangup handler does.
Latencies are of the whole authorize session, from connecting to Asterisk's closing HANGUP.
Two phases, one line per figure:

- Saturation (closed loop): ``clients`` threads each run authorize then settle, back to back,
  as fast as the server answers. ``setups_per_s`` (also ``saturation_setups_per_s``) is the
  throughput of one server process; the ``saturation_authorize_*`` latencies are mostly
  queueing (latency ≈ clients / throughput), they say little about the server.
- Offered load (open loop): calls arrive at ``offered_setups_per_s`` (100/s, the target),
  evenly spaced, whether or not earlier ones are done; each is its own Asterisk connection
  for authorize, then, after a simulated call of ``call_s`` seconds, another for settle, so
  about rate times call_s calls are in progress at once. ``authorize_p50_ms`` and
  ``authorize_p99_ms`` are this phase's, measured from when each call was due (a late start
  counts against the server, no coordinated omission). ``offered_achieved_setups_per_s``
  says whether the server kept up. On this machine (a shared 2-core VM) a lower rate gives
  higher latencies, not lower: between calls the CPUs idle, and waking them costs time on
  every round trip. Run it a few times and take the median; 300 calls (--quick) make a
  noisy p99.

``single_authorize_p50_ms`` is one call at a time (nothing else running) and
``bare_session_p50_ms`` the baseline measured in the same run: a session with no database
step (environment, one command, HANGUP), so ``decision_to_bare_ratio`` (also printed as
``single_authorize_vs_bare_ratio``) is what a call setup costs over the bare FastAGI exchange;
absolute latencies drift twofold between runs on these machines, the ratio much less. The
bare session is an authorize whose uniqueid is no uniqueid: the server refuses it with one
SET VARIABLE before any database step and logs nothing (earlier runs used an unknown script,
which got a VERBOSE; the server now closes those without a command, which would make the
baseline cheaper than before, and a settle with a wrong token logs a warning each time).
``*_settles_not_ok`` count settles the server did not answer SETTLED=OK (0 expected).

``server_cpu_ms_per_setup`` is the server process's CPU time (Linux /proc) per setup in the
saturation phase, ``postgres_cpu_ms_per_setup`` that of all PostgreSQL processes and
``client_cpu_ms_per_setup`` this process's (the simulated Asterisk). The client runs on the
same machine and takes CPU from the server and PostgreSQL; real Asterisk would not.
 ``BENCH_CLIENTS``, ``BENCH_CALLS``, ``BENCH_RATE`` and ``BENCH_CALL_S``
override the defaults; ``BENCH_WRAP`` prefixes the server's command (e.g. a profiler).

    .venv/bin/python bench/agi.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20,000 prefixes, 300 calls")
    args = parser.parse_args()
    prefixes, calls, clients = (20_000, 300, 8) if args.quick else (200_000, 3000, 16)
    clients = int(os.environ.get("BENCH_CLIENTS", clients))
    calls = int(os.environ.get("BENCH_CALLS", calls))
    rate = float(os.environ.get("BENCH_RATE", 100))
    call_s = float(os.environ.get("BENCH_CALL_S", 1.0))

    with scratch_database() as database_url:
        run(database_url, prefixes, calls, clients, rate, call_s)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of its own for the run (its URL), dropped afterwards."""
    import psycopg

    from bench.ledger import admin_url

    admin = admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_setup(database_url: str) -> dict[str, str]:
    """Django in this process on that database; the environment the servers get (the same
    state directory, so the same SECRET_KEY and settle tokens everywhere)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PANEL_STATE_DIR": tempfile.mkdtemp(prefix="panel-bench-"),
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "EMAIL_URL": "locmem:",
        "CELERY_TASK_ALWAYS_EAGER": "1",
    }
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    return env


def seed(prefixes: int, member_count: int) -> tuple[Any, list[str], float]:
    """Migrate; a carrier with one trunk and a deck of ``prefixes`` Berlin prefixes; the
    access number; members with a verified phone, 1000.00 of credit, a per-call cap of 1.00
    and up to 4 calls at once. The access number, the members' phone numbers and how long
    the deck took to import."""
    from datetime import timedelta
    from decimal import Decimal

    from django.core.management import call_command
    from django.utils import timezone

    from panel.models import Membership, Supplier, User
    from panel.services import ledger
    from telephony import services
    from telephony.models import AccessNumber, CallPlan, Carrier, Phone, Trunk

    call_command("migrate", verbosity=0)
    carrier = Carrier.objects.create(name="Bench", supplier=Supplier.objects.create(name="Bench"))
    Trunk.objects.create(
        carrier=carrier, name="bench", dial_template="PJSIP/{number}@bench", priority=1
    )
    lines = [b"prefix,destination,rate,increment,connect_fee"]
    # Seven-digit prefixes from 4930000 on: Berlin numbers hit the deepest ones.
    lines += [
        b"%d,Destination %d,0.%06d,60/1,0" % (4930000 + n, n, 100 + n % 9000)
        for n in range(prefixes - 1)
    ]
    lines.append(b"49,Germany,0.010000,60/60,0")
    began = time.perf_counter()
    deck = services.deck_upload(
        carrier=carrier,
        actor=None,
        filename="bench.csv",
        content=b"\n".join(lines) + b"\n",
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(minutes=1),
    )
    services.deck_import(deck_id=deck.pk)
    deck_seconds = time.perf_counter() - began
    access = AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")
    members = []
    for n in range(member_count):
        user = User.objects.create_user(email=f"caller{n}@bench.coop", password=None)
        Membership.objects.create(user=user, status="member", name=user.email)
        phone = Phone.objects.create(
            member=user, number=f"+49151000{n:05d}", verified_at=timezone.now()
        )
        services.plan_for(user)
        CallPlan.objects.filter(member=user).update(max_concurrent=4, per_call_cap=Decimal("1.00"))
        ledger.payment_record(
            actor=None,
            member=user,
            amount=Decimal("1000.00"),
            received_on=timezone.localdate(),
            reference="bench",
            source_key=f"bench-{n}",
        )
        members.append(phone.number)
    return access, members, deck_seconds


def run(
    database_url: str, prefixes: int, calls: int, clients: int, rate: float, call_s: float
) -> None:
    env = django_setup(database_url)
    # Enough members that the open loop's calls in progress stay within 4 each.
    access, members, deck_seconds = seed(prefixes, max(clients, int(rate * (call_s + 1)) // 2 + 1))
    port = free_port()
    server = start_server(
        port,
        env,
        wrap=[
            *os.environ.get("BENCH_WRAP", "").split(),
            sys.executable,
            *(
                ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
                if os.environ.get("BENCH_PROFILE")
                else []
            ),
        ],
    )
    try:
        wait_listening(port, server)
        saturation = closed_loop(port, access.number, members[:clients], calls, server.pid)
        setups = len(saturation.latencies)
        cpu = saturation.server_cpu(server.pid)
        offered = open_loop(port, access.number, members, calls, rate, call_s)
        single, bare = one_at_a_time(port, access.number, members[0], 200)
    finally:
        server.send_signal(2)  # SIGINT: the server stops cleanly (and a profiler writes out)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"setups_per_s: {setups / saturation.wall:.0f}")
    print(f"authorize_p50_ms: {offered.percentile(50):.2f}")
    print(f"authorize_p99_ms: {offered.percentile(99):.2f}")
    print(f"deck_import_s: {deck_seconds:.1f}")
    print(f"offered_setups_per_s: {rate:.0f}")
    print(f"offered_authorize_p90_ms: {offered.percentile(90):.2f}")
    print(f"offered_achieved_setups_per_s: {len(offered.latencies) / offered.wall:.0f}")
    print(f"offered_call_s: {call_s}")
    print(f"offered_calls: {len(offered.latencies)}")
    print(f"offered_refused: {offered.refused}")
    print(f"offered_failed: {offered.failed}")
    print(f"offered_settles_not_ok: {offered.settles_not_ok}")
    print(f"saturation_setups_per_s: {setups / saturation.wall:.0f}")
    print(f"saturation_clients: {clients}")
    print(f"saturation_authorize_p50_ms: {saturation.percentile(50):.2f}")
    print(f"saturation_authorize_p99_ms: {saturation.percentile(99):.2f}")
    print(f"saturation_calls: {setups}")
    print(f"saturation_refused: {saturation.refused}")
    print(f"saturation_failed: {saturation.failed}")
    print(f"saturation_settles_not_ok: {saturation.settles_not_ok}")
    if cpu is not None:
        print(f"server_cpu_ms_per_setup: {cpu * 1000 / setups:.2f}")
    if saturation.postgres_cpu is not None:
        print(f"postgres_cpu_ms_per_setup: {saturation.postgres_cpu * 1000 / setups:.2f}")
    print(f"client_cpu_ms_per_setup: {saturation.client_cpu * 1000 / setups:.2f}")
    print(f"deck_prefixes: {prefixes}")
    print(f"single_authorize_p50_ms: {single.percentile(50):.2f}")
    print(f"single_authorize_p99_ms: {single.percentile(99):.2f}")
    print(f"bare_session_p50_ms: {bare.percentile(50):.2f}")
    print(f"bare_session_p99_ms: {bare.percentile(99):.2f}")
    ratio = single.percentile(50) / bare.percentile(50)
    print(f"single_authorize_vs_bare_ratio: {ratio:.1f}")
    print(f"decision_to_bare_ratio: {ratio:.1f}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server(subprocess.Popen[bytes]):
    """``manage.py fastagi`` as a process of its own; ``log`` keeps its last stderr lines,
    ``warnings`` counts its warnings by message (numbers and addresses left out)."""

    log: deque[str]
    warnings: Counter[str]


def start_server(
    port: int, env: dict[str, str], *, wrap: list[str] | None = None, args: Sequence[str] = ()
) -> Server:
    """Start ``manage.py fastagi`` on 127.0.0.1:PORT (64 authorize sessions, then ``args``).

    Its stderr is read all the time by a thread of its own: unread, a pipe fills after 64 KiB
    of warnings and the server would block in the middle of a session.
    """
    server = Server(
        [
            *(wrap or [sys.executable]),
            "manage.py",
            "fastagi",
            "--listen",
            f"127.0.0.1:{port}",
            "--max-sessions",
            "64",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server.log = deque(maxlen=50)
    server.warnings = Counter()
    assert server.stderr is not None

    def drain(stream: Any, log: deque[str], warnings: Counter[str]) -> None:
        for line in stream:
            text = line.decode(errors="replace").rstrip()
            log.append(text)
            # "2026-12-03 12:00:00,123 WARNING telephony.fastagi: FastAGI: ..." -> the message
            level, _, message = text.partition(" ")[2].partition(" ")[2].partition(" ")
            if level == "WARNING":
                warnings[re.sub(r"[0-9][0-9.:]*", "N", message.partition(": ")[2])[:80]] += 1

    threading.Thread(
        target=drain, args=(server.stderr, server.log, server.warnings), daemon=True
    ).start()
    return server


def wait_listening(port: int, server: Server, timeout: float = 60.0) -> None:
    """Until the server accepts connections; RuntimeError with its last words otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                tail = "\n".join(server.log)
                raise RuntimeError(f"the FastAGI server did not start:\n{tail}") from None
            time.sleep(0.05)


class Phase:
    """Latencies (ms) of the authorize sessions of one phase, refusals, and its wall time."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.refused = 0
        self.failed = 0  # sessions the server closed or reset (over max_sessions)
        self.settles_not_ok = 0  # settles not answered SETTLED=OK
        self.wall = 0.0
        self.lock = threading.Lock()
        self.cpu_before: float | None = None
        self.client_cpu = 0.0
        self.postgres_cpu: float | None = None

    def add(self, elapsed_ms: float, done: object) -> None:
        with self.lock:
            self.latencies.append(elapsed_ms)
            self.refused += getattr(done, "variables", {}).get("AUTH_RESULT") != "OK"

    def fail(self) -> None:
        with self.lock:
            self.failed += 1

    def settled(self, ok: bool) -> None:
        with self.lock:
            self.settles_not_ok += not ok

    def percentile(self, p: int) -> float:
        ordered = sorted(self.latencies)
        if p == 50:
            return statistics.median(ordered)
        return ordered[max(0, int(len(ordered) * p / 100) - 1)]

    def server_cpu(self, pid: int) -> float | None:
        """CPU seconds the server used since ``cpu_before`` was taken (None off Linux)."""
        now = _cpu_seconds(pid)
        if now is None or self.cpu_before is None:
            return None
        return now - self.cpu_before


def _postgres_cpu_seconds() -> float | None:
    """CPU seconds of all PostgreSQL processes on this machine (backends, WAL writer, ...)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, _, rest = text.partition(")")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total if Path("/proc/self/stat").exists() else None


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NODE = "bench"


def _authorize(port: int, access: str, caller: str, uniqueid: str, n: int) -> Any:
    from telephony import asterisk_sim

    return asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller=caller,
            access=access,
            # As the dialplan calls it: access number, caller ID, node name.
            args=[access, caller, NODE],
            dtmf=[f"030{(n * 7919) % 10_000_000:07d}"],
        ),
        "127.0.0.1",
        port,
    )


def _settle(port: int, uniqueid: str, done: Any, phase: Phase) -> None:
    """The hangup handler's settle of an answered 30 s call, if the authorize said OK (the
    dialplan settles nothing else), with the token the authorize gave."""
    from telephony import asterisk_sim

    if done.variables.get("AUTH_RESULT") != "OK":
        return
    settled = asterisk_sim.run(
        asterisk_sim.Call(
            uniqueid=uniqueid,
            caller="",
            access="",
            script="settle",
            args=["ANSWER", "100", "130", "1", done.variables.get("SETTLE_TOKEN", "")],
        ),
        "127.0.0.1",
        port,
    )
    phase.settled(settled.variables.get("SETTLED") == "OK")


def closed_loop(port: int, access: str, members: list[str], calls: int, server_pid: int) -> Phase:
    """Each client: authorize, settle, again, as fast as the server answers."""
    phase = Phase()
    per_client = calls // len(members)

    def client(n: int) -> None:
        for k in range(per_client):
            uniqueid = f"bench-{n}-{k}"
            started = time.perf_counter()
            try:
                done = _authorize(port, access, members[n], uniqueid, n * per_client + k)
                phase.add((time.perf_counter() - started) * 1000, done)
                _settle(port, uniqueid, done, phase)
            except OSError:
                phase.fail()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(members))]
    phase.cpu_before = _cpu_seconds(server_pid)
    postgres_before = _postgres_cpu_seconds()
    client_before = time.process_time()
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.wall = time.perf_counter() - began
    phase.client_cpu = time.process_time() - client_before
    postgres_after = _postgres_cpu_seconds()
    if postgres_before is not None and postgres_after is not None:
        phase.postgres_cpu = postgres_after - postgres_before
    return phase


def one_at_a_time(port: int, access: str, caller: str, calls: int) -> tuple[Phase, Phase]:
    """Uncontended: one call at a time (authorize, then settle), and the baseline of the same
    run, a bare session (the environment, one VERBOSE, HANGUP: the transport and the server's
    own overhead, no database)."""
    from telephony import asterisk_sim

    single, bare = Phase(), Phase()
    for k in range(calls):
        uniqueid = f"single-{k}"
        started = time.perf_counter()
        done = _authorize(port, access, caller, uniqueid, k)
        single.add((time.perf_counter() - started) * 1000, done)
        _settle(port, uniqueid, done, single)
        started = time.perf_counter()
        # An authorize whose uniqueid is not one (the "/"): the server answers
        # AUTH_RESULT=REFUSED before any database step, and logs no warning.
        nothing = asterisk_sim.Call(
            uniqueid=f"bare/{k}", caller=caller, access=access, args=[access, caller, NODE]
        )
        asterisk_sim.run(nothing, "127.0.0.1", port)
        bare.add((time.perf_counter() - started) * 1000, nothing)
        if [line for way, line in nothing.transcript if way == ">>"] != [
            'SET VARIABLE "AUTH_RESULT" "REFUSED"'
        ]:
            raise RuntimeError(f"the bare session was not a bare one: {nothing.transcript}")
    return single, bare


def open_loop(
    port: int, access: str, members: list[str], calls: int, rate: float, call_s: float
) -> Phase:
    """Calls due every 1/rate seconds, each its own authorize and, call_s later, settle."""
    phase = Phase()
    began = time.perf_counter() + 0.2

    def one(i: int) -> None:
        due = began + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        uniqueid = f"open-{i}"
        try:
            done = _authorize(port, access, members[i % len(members)], uniqueid, i)
            phase.add((time.perf_counter() - due) * 1000, done)
            time.sleep(call_s)
            _settle(port, uniqueid, done, phase)
        except OSError:
            phase.fail()

    # A thread per call in progress (and some to spare): none waits for a free one.
    with ThreadPoolExecutor(max_workers=int(rate * (call_s + 1)) + 32) as pool:
        list(pool.map(one, range(calls)))
    phase.wall = time.perf_counter() - began - call_s
    return phase


if __name__ == "__main__":
    main()
