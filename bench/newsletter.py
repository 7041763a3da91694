"""Benchmark of the newsletters issue: one campaign to 100,000 subscribers through a real worker.

Creates a throw-away database on the local PostgreSQL (the role bin/test creates, or
BENCH_ADMIN_URL=postgres://user:pw@host:port/postgres), migrates it, makes a member with a
verified sending domain, a list of 100,000 confirmed subscribers (5,000 with --quick), the
co-op's price per message and a raised sending limit. Starts an SMTP sink on loopback (its own
process; it keeps only each message's Message-ID) and a real Celery worker (--concurrency 2,
with beat) on Redis (redis://127.0.0.1:6379/13, or BENCH_BROKER_URL), starts the campaign and
waits until it is sent. Prints one `name: value` line per figure on stdout (progress on stderr):

- messages_per_s: subscribers / wall time from campaign_start to the state "sent" (including
  the preparation of one delivery row per subscriber); messages_per_s_steady: the rate of the
  campaign's submitted counter between 10% and 90% done;
- peak_rss_mb: the largest VmHWM of any worker process (the main process, its pool children,
  the embedded beat); peak_rss_total_mb: the largest sum of their VmRSS, sampled every 0.5 s
  (pages the forked processes share are counted in each, so the sum overstates their use);
- duplicates and missing: counted by Message-ID at the sink against the campaign's deliveries;
- baseline_messages_per_s: one plain smtplib connection from this process to the same sink,
  sending a pre-built message of the campaign's size (no database, no signing): the median of
  5 runs of subscribers/25 messages each (at least 1,000), measured after the campaign, with
  the worker stopped; ratio_to_baseline is messages_per_s over it;
- compose_sign_ms: building and DKIM-signing one message in this process, the median of 5 runs
  of 2,000 messages.

On stderr it also says where the CPU went during the campaign (worker, PostgreSQL, sink,
others' work on the machine) and what the database backends were doing. With BENCH_PROFILE=1
it then sends two more 5,000-message campaigns in this process (campaign_send called directly,
no worker): one with every SQL statement timed (and the two costliest SELECTs EXPLAINed), one
under cProfile, whose summary and top functions go to stderr.

    .venv/bin/python bench/newsletter.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)

TICKS = os.sysconf("SC_CLK_TCK")
BASELINE_ID = "baseline@bench.invalid"
# The campaign of tests/newsletters/test_worker.py.
TEXT_BODY = "Dear {{ name }},\nthe festival is on Saturday.\n\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML_BODY = "<h1>Harvest festival</h1><p>Dear {{ name }}, see you on Saturday.</p>"


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5,000 subscribers")
    # Internal: run as the SMTP sink (see sink_main).
    parser.add_argument("--sink", metavar="OUTFILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main(Path(args.sink))
        return
    subscribers = 5_000 if args.quick else 100_000

    broker = os.environ.get("BENCH_BROKER_URL") or "redis://127.0.0.1:6379/13"
    if broker.startswith("redis://"):
        import redis

        try:
            redis.Redis.from_url(broker, socket_timeout=2).ping()
        except redis.RedisError as exc:
            print(
                f"error: Redis is not reachable at {broker} ({exc}); start it (bin/test does) "
                "or set BENCH_BROKER_URL",
                file=sys.stderr,
            )
            sys.exit(2)

    import psycopg

    from bench.ledger import admin_url

    began = time.perf_counter()
    admin = admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run(admin.rsplit("/", 1)[0] + f"/{name}", broker, subscribers, began)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The SMTP sink ----------------------------------------------------------------------------
#
# A minimal SMTP server on asyncio's Protocol (no aiosmtpd): it shares the two cores with the
# worker, so per message it does a few buffer operations and one regex over the header block.
# Not a general SMTP server: no pipelining beyond what arrives in order, no extensions.

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.M | re.I)


def sink_main(out: Path) -> None:
    import asyncio
    import resource

    counts: Counter[str] = Counter()
    stats: dict[str, float] = {"messages": 0, "connections": 0, "no_message_id": 0}

    class Smtp(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            stats["connections"] += 1
            self.transport = transport
            self.buffer = bytearray()
            self.data: bytearray | None = None
            transport.write(b"220 bench-sink ESMTP\r\n")

        def data_received(self, chunk: bytes) -> None:
            if self.data is not None:
                self._in_data(chunk)
                return
            self.buffer += chunk
            self._commands()

        def _in_data(self, chunk: bytes) -> None:
            assert self.data is not None
            start = max(0, len(self.data) - 4)
            self.data += chunk
            end = self.data.find(b"\r\n.\r\n", start)
            if end < 0:
                return
            # The buffer began with a virtual CRLF, so that an empty message ends too.
            head_end = self.data.find(b"\r\n\r\n", 2, end + 2)
            match = MESSAGE_ID.search(self.data, 2, head_end if head_end > 0 else end + 2)
            if match:
                counts[match.group(1).decode("ascii", "replace")] += 1
            else:
                stats["no_message_id"] += 1
            stats["messages"] += 1
            rest = bytes(self.data[end + 5 :])
            self.data = None
            self.transport.write(b"250 2.0.0 Ok: queued\r\n")
            if rest:
                self.buffer += rest
                self._commands()

        def _commands(self) -> None:
            while self.data is None:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.transport.write(b"250 bench-sink\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    self.transport.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"DATA":
                    self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    self.data = bytearray(b"\r\n")
                    rest, self.buffer = bytes(self.buffer), bytearray()
                    if rest:
                        self._in_data(rest)
                elif verb == b"QUIT":
                    self.transport.write(b"221 2.0.0 Bye\r\n")
                    self.transport.close()
                    return
                else:
                    self.transport.write(b"502 5.5.2 Command not recognized\r\n")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(Smtp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await stop
        server.close()

    asyncio.run(serve())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"counts": counts, "stats": stats}))
    tmp.rename(out)


class Sink:
    def __init__(self, tmp: Path) -> None:
        self.out = tmp / "sink.json"
        self.proc = subprocess.Popen(  # noqa: S603  (this file, fixed arguments)
            [sys.executable, str(Path(__file__).resolve()), "--sink", str(self.out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            self.proc.kill()
            raise RuntimeError("the SMTP sink did not start")
        self.port = int(line)

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# The worker and /proc ---------------------------------------------------------------------


def start_worker(tmp: Path, *, queue: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A real worker with embedded beat, as tests.conftest.start_worker starts it.

    Reimplemented (a few lines) because tests/conftest.py imports pytest and the suite's
    fixtures.
    """
    from panel.celery import app

    hostname = f"{queue}@localhost"
    logfile = tmp / "worker.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "panel",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "2",
        "--hostname",
        hostname,
        "--queues",
        queue,
        "--without-gossip",
        "--without-mingle",
        "--beat",
        "--schedule",
        str(tmp / "beat-schedule"),
    ]
    with logfile.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603  (celery from our virtualenv, fixed arguments)
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc, kill=True)
            raise RuntimeError(f"worker did not start:\n{logfile.read_text()[-4000:]}")
    return proc


def stop_worker(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is not None:
        return
    if not kill:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def delete_queue(queue: str) -> None:
    """Delete the bench's queue (and what is left in it) from the broker.

    A plain channel.queue_delete(name) deletes nothing on kombu's Redis transport: it only
    deletes the bindings this connection has declared, so the queue is declared first.
    """
    from kombu import Exchange, Queue

    from panel.celery import app

    try:
        with app.connection_for_write() as conn:
            bound = Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel)
            bound.declare()
            bound.delete()
    except Exception as exc:  # cleanup must not hide the run's own error
        log(f"could not delete the queue {queue}: {exc}")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in kB (empty when it is gone)."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key] = int(value.split()[0])
    except OSError:
        return {}
    return found


def proc_stat(pid: int) -> tuple[int, str, float] | None:
    """(ppid, command name, CPU seconds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state ppid ... utime (field 14 of the line) stime (15).
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICKS


def all_processes() -> dict[int, tuple[int, str, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                found[int(entry)] = stat
    return found


def tree(root: int, processes: dict[int, tuple[int, str, float]]) -> list[int]:
    """``root`` and its descendants (no /proc/<pid>/task/*/children on this kernel)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _name, _cpu) in processes.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Sampler(threading.Thread):
    """Samples the worker tree's memory, and CPU time by process group, every 0.5 s.

    CPU groups: the worker tree, the sink, PostgreSQL (backends come and go with the worker's
    tasks, so each one's last sample counts; up to 0.5 s of a backend's last work is lost),
    Redis and this bench process. Also what the database's client backends are doing
    (pg_stat_activity): on CPU, waiting for a lock, or idle while the worker works.
    """

    def __init__(self, root: int, sink_pid: int, database_url: str) -> None:
        super().__init__(daemon=True)
        self.root, self.sink_pid, self.database_url = root, sink_pid, database_url
        self.backends: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.max_sum_kb = 0
        self.hwm_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, tuple[str, float]] = {}
        self.sampled = False

    def _group(self, pid: int, name: str, workers: set[int]) -> str:
        if pid in workers:
            return "worker"
        if pid == self.sink_pid:
            return "sink"
        if pid == os.getpid():
            return "bench"
        if name == "postgres":
            return "postgres"
        if name.startswith("redis-server"):
            return "redis"
        return ""

    def sample(self) -> None:
        processes = all_processes()
        workers = tree(self.root, processes)
        total = 0
        for pid in workers:
            status = proc_status(pid)
            if not status:
                continue
            total += status.get("VmRSS", 0)
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status.get("VmHWM", 0))
            self.names[pid] = processes[pid][1]
        self.max_sum_kb = max(self.max_sum_kb, total)
        members = set(workers)
        for pid, (_ppid, name, cpu) in processes.items():
            group = self._group(pid, name, members)
            if not group:
                continue
            if not self.sampled:
                self.cpu_first[pid] = cpu  # what it had used before the campaign
            self.cpu_last[pid] = (group, cpu)
        self.sampled = True

    def cpu(self) -> dict[str, float]:
        groups = dict.fromkeys(("worker", "postgres", "sink", "redis", "bench"), 0.0)
        for pid, (group, cpu) in self.cpu_last.items():
            groups[group] += cpu - self.cpu_first.get(pid, 0.0)
        return groups

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as db:
            while not self.stopping.wait(0.5):
                self.sample()
                for state, wait in db.execute(
                    "SELECT state, wait_event_type FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'"
                ):
                    if state == "active":
                        self.backends[f"waiting on {wait}" if wait else "active"] += 1
                    else:
                        self.backends[state or "?"] += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sample()  # and the final VmHWM of each, before the worker stops


# The run ----------------------------------------------------------------------------------


def run(database_url: str, broker: str, n: int, began: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="panel-bench-newsletter-"))
    queue = f"bench-nl-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PANEL_STATE_DIR": str(tmp / "state"),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "EMAIL_URL": "locmem:",
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    from panel.celery import app

    app.conf.task_default_queue = queue
    app.conf.task_always_eager = False
    sink: Sink | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        from django.core.management import call_command

        log("migrating")
        call_command("migrate", verbosity=0)
        campaign_id, mlist = populate(n)
        sink = Sink(tmp)
        log(f"sink on 127.0.0.1:{sink.port}; starting the worker (queue {queue})")
        worker = start_worker(
            tmp,
            queue=queue,
            env={
                **env,
                "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
                "NEWSLETTER_MAINTENANCE_SECONDS": "5",
            },
        )
        figures = send_campaign(campaign_id, n, worker, sink, database_url)
        stop_worker(worker)
        worker = None

        baseline = baseline_rate(campaign_id, sink.port, max(1_000, n // 25))
        compose_ms = compose_sign_ms(campaign_id)
        if os.environ.get("BENCH_PROFILE"):
            profile(mlist, sink.port)
        received = sink.stop()
        sink = None
        duplicates, missing = check_arrivals(campaign_id, received)
    except BaseException:
        if worker is not None and (tmp / "worker.log").exists():
            log("worker log, last lines:\n" + (tmp / "worker.log").read_text()[-4000:])
        raise
    finally:
        if worker is not None:
            stop_worker(worker)
        if sink is not None:
            sink.kill()
        delete_queue(queue)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"subscribers: {n}")
    print(f"messages_per_s: {figures['rate']:.0f}")
    print(f"messages_per_s_steady: {figures['steady']:.0f}")
    print(f"peak_rss_mb: {figures['peak_rss_mb']:.0f}")
    print(f"peak_rss_total_mb: {figures['peak_rss_total_mb']:.0f}")
    print(f"duplicates: {duplicates}")
    print(f"missing: {missing}")
    print(f"baseline_messages_per_s: {baseline:.0f}")
    print(f"ratio_to_baseline: {figures['rate'] / baseline:.3f}")
    print(f"compose_sign_ms: {compose_ms:.3f}")
    print(f"elapsed_s: {time.perf_counter() - began:.0f}")


def populate(n: int) -> tuple[int, Any]:
    """A member, her verified domain and list, n confirmed subscribers, a price, a limit."""
    from datetime import date
    from decimal import Decimal

    from django.utils import timezone

    from newsletters import services
    from newsletters.models import SenderLimit, SendingDomain, Subscriber, SubscriberStatus
    from panel.models import Membership, Supplier, User
    from panel.services.ledger import cost_rate_set

    admin = User.objects.create_superuser(email="carol@bench.coop", password=None)
    alice = User.objects.create_user(email="alice@bench.coop", password=None)
    Membership.objects.create(user=alice, status="member", name="Alice Bench")
    domain = services.domain_add(member=alice, name="alice-news.example")
    # No DNS in a bench: the domain is marked verified directly.
    SendingDomain.objects.filter(pk=domain.pk).update(verified_at=timezone.now())
    domain.refresh_from_db()
    mlist = services.list_create(
        member=alice,
        name="Garden notes",
        slug="garden-notes",
        description="What grows in the commune garden.",
        domain=domain,
        from_name="Alice's garden",
        from_local="garden",
        signup_open=True,
        archive_public=True,
    )
    add_subscribers(mlist, n)
    cost_rate_set(
        actor=admin,
        service="newsletters",
        kind="message",
        unit="message",
        unit_cost=Decimal("0.000400"),
        supplier=Supplier.objects.create(name="Relay server rent"),
        reference="INV-BENCH-MAIL",
        valid_from=date(2020, 1, 1),
    )
    SenderLimit.objects.create(member=alice, per_minute=10_000_000)
    campaign = services.campaign_create(
        mlist=mlist,
        actor=alice,
        subject="Harvest festival",
        text_body=TEXT_BODY,
        html_body=HTML_BODY,
    )
    assert Subscriber.objects.filter(list=mlist, status=SubscriberStatus.CONFIRMED).count() == n
    return campaign.pk, mlist


def add_subscribers(mlist: Any, n: int, prefix: str = "reader") -> None:
    from django.utils import timezone

    from newsletters.models import Subscriber, SubscriberStatus

    now = timezone.now()
    log(f"inserting {n} confirmed subscribers")
    for start in range(0, n, 10_000):
        Subscriber.objects.bulk_create(
            [
                Subscriber(
                    list=mlist,
                    email=f"{prefix}{i}@example.net",
                    name=f"Reader {i}",
                    status=SubscriberStatus.CONFIRMED,
                    confirmed_at=now,
                )
                for i in range(start, min(n, start + 10_000))
            ]
        )


def send_campaign(
    campaign_id: int, n: int, worker: subprocess.Popen[bytes], sink: Sink, database_url: str
) -> dict[str, float]:
    from newsletters import services
    from newsletters.models import Campaign

    campaign = Campaign.objects.get(pk=campaign_id)
    sampler = Sampler(worker.pid, sink.proc.pid, database_url)
    sampler.sample()
    sampler.start()
    machine_before = machine_cpu()
    log(f"campaign {campaign_id}: starting ({n} subscribers)")
    # The clock starts before campaign_start: the figure includes the worker's preparation of
    # one delivery row per subscriber (INSERT ... SELECT), not only the sending.
    try:
        t0 = time.perf_counter()
        services.campaign_start(campaign=campaign, actor=campaign.list.member)
        samples: list[tuple[float, int]] = []
        last_progress, last_submitted, last_log = t0, -1, t0
        while True:
            state, submitted = Campaign.objects.filter(pk=campaign_id).values_list(
                "state", "submitted"
            )[0]
            now = time.perf_counter()
            samples.append((now, submitted))
            if state == "sent":
                break
            if state != "sending":
                raise RuntimeError(f"campaign state is {state!r}")
            if submitted != last_submitted:
                last_progress, last_submitted = now, submitted
            elif now - last_progress > 300:
                raise RuntimeError(f"no progress for 300 s at {submitted}/{n} submitted")
            if worker.poll() is not None:
                raise RuntimeError("the worker exited")
            if now - last_log >= 15:
                log(f"  {submitted}/{n} submitted after {now - t0:.0f} s")
                last_log = now
            time.sleep(0.2)
        t1 = time.perf_counter()
    finally:
        sampler.stop()  # also when the campaign failed: its connection must go
    machine_after = machine_cpu()
    seconds = t1 - t0

    campaign.refresh_from_db()
    log(
        f"campaign sent in {seconds:.1f} s: recipients {campaign.recipients}, submitted "
        f"{campaign.submitted}, failed {campaign.failed}, skipped {campaign.skipped}"
    )
    first_sent = next((t for t, s in samples if s > 0), t1)
    log(f"  first message submitted {first_sent - t0:.1f} s after campaign_start (preparation)")
    busy = (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
    used = sampler.cpu()
    # Busy time of the whole machine not accounted to ours: other people's work on it.
    used["other"] = (machine_after[0] - machine_before[0]) / TICKS - sum(used.values())
    log(
        f"  CPU during the campaign: machine {busy:.0%} busy of {os.cpu_count()} cores; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
        + f" (of {seconds * (os.cpu_count() or 1):.1f} core-seconds)"
    )
    seen = sum(sampler.backends.values())
    log(
        "  database client backends, share of samples: "
        + ", ".join(f"{k} {v / max(1, seen):.0%}" for k, v in sampler.backends.most_common())
    )
    for pid, hwm in sorted(sampler.hwm_kb.items()):
        log(f"  worker process {pid} ({sampler.names.get(pid, '?')}): VmHWM {hwm / 1024:.0f} MB")

    low = next(((t, s) for t, s in samples if s >= 0.1 * n), None)
    high = next(((t, s) for t, s in samples if s >= 0.9 * n), None)
    if low and high and high[0] > low[0]:
        steady = (high[1] - low[1]) / (high[0] - low[0])
    else:  # too few samples (a tiny run): the whole sending phase
        steady = n / max(1e-9, t1 - first_sent)
    return {
        "rate": n / seconds,
        "steady": steady,
        "peak_rss_mb": max(sampler.hwm_kb.values(), default=0) / 1024,
        "peak_rss_total_mb": sampler.max_sum_kb / 1024,
    }


def check_arrivals(campaign_id: int, received: dict[str, Any]) -> tuple[int, int]:
    """(duplicates, missing) of the campaign's messages, counted by Message-ID at the sink."""
    from newsletters import tokens
    from newsletters.models import Delivery

    counts: dict[str, int] = received["counts"]
    log(f"sink: {received['stats']}")
    duplicates = missing = expected = 0
    ids = (
        Delivery.objects.filter(campaign_id=campaign_id)
        .order_by("pk")
        .values_list("pk", flat=True)
        .iterator(chunk_size=10_000)
    )
    for delivery_id in ids:
        expected += 1
        seen = counts.get(tokens.message_id(delivery_id), 0)
        missing += seen == 0
        duplicates += max(0, seen - 1)
    log(f"  {expected} deliveries checked against {len(counts)} distinct Message-IDs")
    return duplicates, missing


def sample_message(campaign_id: int) -> bytes:
    from newsletters.compose import Composer, Recipient
    from newsletters.models import Campaign

    campaign = Campaign.objects.select_related("list__domain").get(pk=campaign_id)
    composer = Composer(campaign, campaign.list)
    return composer.build(Recipient(1, 1, "reader0@example.net", "Reader 0"))


def baseline_rate(campaign_id: int, port: int, count: int) -> float:
    """One smtplib connection, a pre-built message of the campaign's size: the median rate of
    5 runs of ``count`` messages.

    Its Message-ID is replaced by BASELINE_ID, which the campaign's count at the sink ignores.
    """
    import smtplib

    message = MESSAGE_ID.sub(f"Message-ID: <{BASELINE_ID}>".encode(), sample_message(campaign_id))
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    rates = []
    try:
        smtp.ehlo()
        assert smtp.sock is not None
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _run in range(5):
            t0 = time.perf_counter()
            for _ in range(count):
                assert smtp.mail("bounces+baseline@bounces.localhost")[0] == 250
                assert smtp.rcpt("reader0@example.net")[0] == 250
                assert smtp.data(message)[0] == 250
            rates.append(count / (time.perf_counter() - t0))
    finally:
        smtp.quit()
    log(
        f"baseline: 5 runs of {count} messages of {len(message)} bytes over one connection: "
        + ", ".join(f"{r:.0f}/s" for r in rates)
    )
    return statistics.median(rates)


def compose_sign_ms(campaign_id: int) -> float:
    """Milliseconds to build and sign one message: median of 5 runs of 2,000."""
    from newsletters.compose import Composer, Recipient
    from newsletters.models import Campaign

    campaign = Campaign.objects.select_related("list__domain").get(pk=campaign_id)
    composer = Composer(campaign, campaign.list)
    runs = []
    for run_index in range(5):
        base = 1_000_000 + run_index * 2_000
        t0 = time.perf_counter()
        for i in range(base, base + 2_000):
            composer.build(Recipient(i, i, f"reader{i}@example.net", f"Reader {i}"))
        runs.append((time.perf_counter() - t0) / 2_000 * 1000)
    log(f"compose+sign ms per message, 5 runs: {', '.join(f'{r:.3f}' for r in runs)}")
    return statistics.median(runs)


# Profile (BENCH_PROFILE=1) ------------------------------------------------------------------


@contextlib.contextmanager
def _settings(**values: Any) -> Iterator[None]:
    from django.conf import settings

    old = {key: getattr(settings, key) for key in values}
    for key, value in values.items():
        setattr(settings, key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            setattr(settings, key, value)


# What the profile summary adds up: (label, file path ending, function name, cumulative?).
PROFILE_PARTS = [
    ("campaign_send, all", "newsletters/services/sending.py", "campaign_send", True),
    ("_claim (lease a batch)", "newsletters/services/sending.py", "_claim", True),
    ("_send_chunk (query + build + SMTP)", "newsletters/services/sending.py", "_send_chunk", True),
    ("  Composer.build", "newsletters/compose.py", "build", True),
    ("    newsletters.dkim.sign", "newsletters/dkim.py", "sign", True),
    ("      dkimpy PEM parse, every message", "dkim/crypto.py", "parse_pem_private_key", True),
    ("      RSA on OpenSSL", "newsletters/dkim.py", "_openssl_rsa_sign", True),
    ("  Relay.send (SMTP transaction)", "newsletters/smtp.py", "send", True),
    ("_commit (record the chunk)", "newsletters/services/sending.py", "_commit", True),
    ("  record_usage_batch", "panel/services/ledger.py", "record_usage_batch", True),
    ("psycopg waiting for the server", "psycopg/connection.py", "wait", False),
]


def _campaign_in_process(mlist: Any, slug: str, size: int) -> int:
    """A prepared campaign of ``size`` messages on a new list of the same member and domain."""
    from newsletters import services
    from newsletters.models import MailingList

    other = MailingList.objects.create(
        member=mlist.member,
        name=slug,
        slug=slug,
        domain=mlist.domain,
        from_name=mlist.from_name,
        from_local=slug,
    )
    add_subscribers(other, size, prefix=slug)
    campaign = services.campaign_create(
        mlist=other,
        actor=mlist.member,
        subject="Harvest festival",
        text_body=TEXT_BODY,
        html_body=HTML_BODY,
    )
    # The tasks that campaign_start and campaign_prepare enqueue go to the bench's queue,
    # whose worker is stopped (the queue is deleted at the end); this process does the work.
    services.campaign_start(campaign=campaign, actor=mlist.member)
    services.campaign_prepare(campaign_id=campaign.pk)
    return campaign.pk


def _send_in_process(campaign_id: int) -> tuple[int, float]:
    from newsletters import services

    sent = 0
    t0 = time.perf_counter()
    for _ in range(100):
        outcome = services.campaign_send(campaign_id=campaign_id, budget_seconds=600)
        sent += outcome.sent
        if outcome.next != "continue":
            break
    assert outcome.next == "done", outcome
    return sent, time.perf_counter() - t0


def explain_slowest(sql: dict[str, list[float]], last: dict[str, tuple[str, Any]]) -> None:
    """EXPLAIN ANALYZE the two costliest SELECTs, with their last parameters (rolled back)."""
    from django.db import connection, transaction

    selects = [k for k in sorted(sql, key=lambda k: -sum(sql[k])) if k.startswith("SELECT")]
    for key in selects[:2]:
        query, params = last[key]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params)
            plan = "\n".join(f"      {row[0]}" for row in cursor.fetchall())
            transaction.set_rollback(True)
        log(f"  plan of {key[:70]}...:\n{plan}")


def profile(mlist: Any, port: int) -> None:
    """5,000-message campaigns sent by campaign_send in this process (no worker).

    First with each SQL statement timed (no profiler), then under cProfile.
    """
    import cProfile
    import io
    import pstats

    from django.db import connection

    size = 5_000
    timed = _campaign_in_process(mlist, "timed", size)
    profiled = _campaign_in_process(mlist, "profiled", size)
    sql: dict[str, list[float]] = {}
    last: dict[str, tuple[str, Any]] = {}

    def timer(execute: Any, query: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            key = re.sub(r"(%s, )+%s", "%s, ...", " ".join(query.split()))[:110]
            sql.setdefault(key, []).append(time.perf_counter() - t0)
            last[key] = (query, params)

    with _settings(NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{port}"):
        with connection.execute_wrapper(timer):
            sent, seconds = _send_in_process(timed)
        log(f"in-process, no profiler: {sent} messages in {seconds:.1f} s ({sent / seconds:.0f}/s)")
        total = sum(sum(v) for v in sql.values())
        log(
            f"  SQL through Django: {sum(len(v) for v in sql.values())} statements "
            f"({sum(len(v) for v in sql.values()) / sent:.1f} per message), {total:.2f} s "
            f"({total / seconds:.0%} of the time); the top ones:"
        )
        for key, times in sorted(sql.items(), key=lambda kv: -sum(kv[1]))[:12]:
            log(
                f"    {sum(times):6.2f} s {len(times):6d}x {statistics.mean(times) * 1000:6.2f} ms"
                f"  {key}"
            )
        explain_slowest(sql, last)
        profiler = cProfile.Profile()
        profiler.enable()
        sent, seconds = _send_in_process(profiled)
        profiler.disable()
    log(f"under cProfile: {sent} messages in {seconds:.1f} s ({sent / seconds:.0f}/s)")
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    lines = []
    for label, path, function, cumulative in PROFILE_PARTS:
        spent = sum(
            (ct if cumulative else tt)
            for (filename, _line, name), (_cc, _nc, tt, ct, _callers) in entries.items()
            if filename.endswith(path) and name == function
        )
        lines.append(
            f"    {label:40s} {spent:6.2f} s {spent / seconds:5.0%} "
            f"{spent / sent * 1000:6.3f} ms/message"
        )
    log("profile summary (cumulative time, share of the wall time):\n" + "\n".join(lines))
    for order, limit in (("cumulative", 25), ("tottime", 25)):
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.strip_dirs().sort_stats(order).print_stats(limit)
        log(f"profile, top {limit} by {order}:\n{text.getvalue()}")


if __name__ == "__main__":
    main()
