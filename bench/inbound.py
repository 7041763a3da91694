"""Benchmark of the inbound endpoint (issue 14): bounces and complaints through real SMTP.

For each code tree measured (this checkout, and with --before REV the code of that commit,
taken out with `git archive` into a temporary directory), a server process creates a
throw-away database on the local PostgreSQL (the role bin/test creates, or
BENCH_ADMIN_URL=postgres://user:pw@host:port/postgres), migrates it, makes a member, a verified
sending domain, a list with a campaign and one delivery per message to come, and starts the
inbound endpoint (newsletters.inbound.server) on loopback. A client process (no Django) then
sends, over SMTP:

- the mixed corpus: every sample of tests/newsletters/samples that tree has (DSNs of Postfix,
  Exim, Sendmail, qmail, Gmail, Yahoo, Office 365; ARF complaints; auto-replies), each copy
  for its own delivery (its VERP address and Message-ID), bounces to the VERP address and
  complaints to fbl@, from 4 connections at once as Postfix delivers;
- large messages of about 5 MB, one after the other: a Postfix bounce returning the
  newsletter with a 5 MB attachment, a complaint about a message of 75,000 small parts, and
  an Exim plain-text bounce quoting a 5 MB body.

Prints one `name: value` line per figure on stdout, medians of --runs runs (progress on
stderr): inbound_messages_per_s (messages / wall time of the mixed corpus), inbound_mb_s
(MB / seconds over the large messages, each timed from DATA to the endpoint's reply) and per
shape, the same with _before for the older tree (its own corpus: the samples it had), the
ratios, and the CPU model (lscpu). Goals (issue 14): 200 messages/s, 2 MB/s and 5 times the
code before it. As a baseline for the machine (two of a kind differ by 2x), the same corpus
goes in the same run to a bare aiosmtpd server that takes and discards each message:
inbound_messages_per_s_bare_smtp, and what the endpoint keeps of that rate.

    .venv/bin/python bench/inbound.py [--quick] [--runs N] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root (or the older tree a
# server process measures, see --code) goes there instead.
sys.path[0] = str(ROOT)

# The last commit before the newsletters' part of issue 14.
BEFORE = "fd20bb8"
MB = 1_000_000
LARGE = 5 * MB
CLIENTS = 4


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, one run")
    parser.add_argument("--runs", type=int, default=0, help="runs per tree (default 3, quick 1)")
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with ('' : none)")
    # Internal: a server process measuring one code tree, or the SMTP client.
    parser.add_argument("--serve", metavar="CODE_ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(Path(args.client))
        return
    runs = args.runs or (1 if args.quick else 3)
    messages = 400 if args.quick else 2000
    large = 1 if args.quick else 2
    if args.serve:
        serve_main(Path(args.serve), runs=runs, messages=messages, large=large)
        return

    trees = [("after", ROOT)]
    temporary = None
    if args.before:
        temporary = Path(tempfile.mkdtemp(prefix="panel-bench-inbound-before-"))
        log(f"taking out {args.before} into {temporary}")
        archive = subprocess.run(  # noqa: S603  (the commit is the operator's own argument)
            ["git", "-C", str(ROOT), "archive", args.before],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(  # noqa: S603
            ["tar", "-x", "-C", str(temporary)],  # noqa: S607  (system tools, on PATH)
            input=archive,
            check=True,
        )
        trees.append(("before", temporary))
    results: dict[str, dict[str, Any]] = {}
    try:
        for label, tree in trees:
            log(f"measuring {label} ({tree})")
            command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(tree)]
            command += ["--runs", str(runs)] + (["--quick"] if args.quick else [])
            done = subprocess.run(  # noqa: S603  (this script, run again)
                command, check=True, capture_output=True, text=True, cwd=tree
            )
            sys.stderr.write(done.stderr)
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)

    after = results["after"]
    from bench.common import cpu_model

    print(f"cpu: {cpu_model()}")
    print(f"runs: {runs}")
    print(f"inbound_messages: {after['messages']} ({after['samples']} samples)")
    print(f"inbound_messages_per_s: {after['messages_per_s']:.0f}")
    print(f"inbound_messages_per_s_bare_smtp: {after['bare_per_s']:.0f}")
    print(f"inbound_share_of_bare_smtp: {after['messages_per_s'] / after['bare_per_s']:.2f}")
    print(f"inbound_large_messages: {after['large']} ({', '.join(after['shapes'])})")
    print(f"inbound_mb_s: {after['mb_s']:.2f}")
    for shape in after["shapes"]:
        print(f"inbound_mb_s_{shape}: {after['mb_s_' + shape]:.2f}")
    before = results.get("before")
    if before:
        print(
            f"inbound_messages_per_s_before: {before['messages_per_s']:.0f} "
            f"({before['samples']} samples)"
        )
        print(f"inbound_mb_s_before: {before['mb_s']:.2f}")
        for shape in before["shapes"]:
            print(f"inbound_mb_s_{shape}_before: {before['mb_s_' + shape]:.2f}")
        print(
            "inbound_messages_per_s_ratio: "
            f"{after['messages_per_s'] / before['messages_per_s']:.1f}"
        )
        print(f"inbound_mb_s_ratio: {after['mb_s'] / before['mb_s']:.1f}")
    print(f"kept_bytes_per_large_message: {after['kept_large']}")
    if before:
        print(f"kept_bytes_per_large_message_before: {before['kept_large']}")


# The server process ---------------------------------------------------------------------------


def serve_main(code: Path, *, runs: int, messages: int, large: int) -> None:
    sys.path[0] = str(code)
    import psycopg

    from bench.ledger import admin_url as _admin_url  # this checkout's bench, either tree

    admin = os.environ.get("BENCH_ADMIN_URL") or _admin_url()
    name = f"panel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        figures = measure(
            admin.rsplit("/", 1)[0] + f"/{name}", runs=runs, messages=messages, large=large
        )
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(figures), flush=True)


def measure(database_url: str, *, runs: int, messages: int, large: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="panel-bench-inbound-"))
    os.environ.update(
        DATABASE_URL=database_url,
        PANEL_STATE_DIR=str(tmp / "state"),
        SECRET_KEY=uuid.uuid4().hex * 2,
        DEBUG="0",
        LOG_LEVEL="WARNING",
        EMAIL_URL="locmem:",
        CELERY_TASK_ALWAYS_EAGER="1",
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    import logging

    from aiosmtpd.controller import Controller
    from django.core.management import call_command

    from newsletters import inbound
    from tests.conftest import free_port

    # What the endpoint logs per message (INFO) is not what is measured.
    logging.getLogger("newsletters").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    log("migrating")
    call_command("migrate", verbosity=0)
    per_run = messages + 3 * large
    deliveries = populate(runs * per_run + 10)
    port = free_port()
    controller = inbound.server("127.0.0.1", port, ["127.0.0.0/8"])
    controller.start()
    bare_port = free_port()
    bare = Controller(Discard(), hostname="127.0.0.1", port=bare_port)
    bare.start()
    figures: dict[str, list[float]] = {}
    shapes: list[str] = []
    samples_used = 0
    kept_large = 0
    try:
        for run in range(runs):
            mine = deliveries[run * per_run : (run + 1) * per_run]
            corpus, samples_used = mixed_corpus(mine[:messages])
            log(f"run {run + 1}: {len(corpus)} mixed messages, {CLIENTS} connections")
            seconds = client(tmp, bare_port, corpus, connections=CLIENTS)["wall"]
            figures.setdefault("bare_per_s", []).append(len(corpus) / seconds)
            seconds = client(tmp, port, corpus, connections=CLIENTS)["wall"]
            figures.setdefault("messages_per_s", []).append(len(corpus) / seconds)
            big = large_corpus(mine[messages:], repeat=large)
            shapes = sorted({shape for shape, _rcpt, _raw in big})
            log(f"run {run + 1}: {len(big)} large messages, one at a time")
            timed = client(tmp, port, [(r, m) for _s, r, m in big], connections=1)
            sizes = [len(m) for _s, _r, m in big]
            figures.setdefault("mb_s", []).append(sum(sizes) / MB / sum(timed["each"]))
            for shape in shapes:
                picked = [i for i, (s, _r, _m) in enumerate(big) if s == shape]
                rate = sum(sizes[i] for i in picked) / MB / sum(timed["each"][i] for i in picked)
                figures.setdefault("mb_s_" + shape, []).append(rate)
            log(
                f"run {run + 1}: {figures['messages_per_s'][-1]:.0f} messages/s, "
                f"{figures['mb_s'][-1]:.2f} MB/s"
            )
        kept_large = kept_bytes_of_large()
        check_outcomes()
    finally:
        controller.stop()
        bare.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {key: statistics.median(values) for key, values in figures.items()}
    result.update(
        messages=messages,
        samples=samples_used,
        large=f"{3 * large} x ~5 MB per run",
        shapes=shapes,
        kept_large=kept_large,
    )
    return result


class Discard:
    """The baseline's DATA hook: takes the message and forgets it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def populate(n: int) -> list[tuple[int, str]]:
    """A member, a verified domain, a list, a sending campaign, n deliveries: (id, address)."""
    from django.utils import timezone

    from newsletters import services
    from newsletters.models import (
        Campaign,
        CampaignState,
        Delivery,
        DeliveryState,
        MailingList,
        SendingDomain,
        Subscriber,
        SubscriberStatus,
    )
    from panel.models import Membership, User

    log(f"making {n} deliveries")
    alice = User.objects.create_user(email="alice@bench.coop", password=None)
    Membership.objects.create(user=alice, status="member", name="Alice Bench")
    domain = services.domain_add(member=alice, name="alice-news.example")
    SendingDomain.objects.filter(pk=domain.pk).update(verified_at=timezone.now())
    mlist = MailingList.objects.create(
        member=alice, name="Garden", slug="garden", domain=domain, from_name="G", from_local="g"
    )
    Subscriber.objects.bulk_create(
        [
            Subscriber(
                list=mlist,
                email=f"reader{i}@example.net",
                status=SubscriberStatus.CONFIRMED,
                confirmed_at=timezone.now(),
            )
            for i in range(n)
        ],
        batch_size=5000,
    )
    # A campaign big enough that complaints pause nothing: what is measured is the endpoint.
    campaign = Campaign.objects.create(
        list=mlist,
        subject="s",
        text_body="t",
        state=CampaignState.SENDING,
        submitted=10_000_000,
        recipients=10_000_000,
    )
    readers = list(Subscriber.objects.filter(list=mlist).order_by("id"))
    Delivery.objects.bulk_create(
        [Delivery(campaign=campaign, subscriber=r, state=DeliveryState.SUBMITTED) for r in readers],
        batch_size=5000,
    )
    found = Delivery.objects.filter(campaign=campaign).select_related("subscriber")
    return [(d.pk, d.subscriber.email) for d in found.order_by("id")]


def _report(name: str, delivery: tuple[int, str]) -> tuple[str, bytes]:
    from django.conf import settings

    from newsletters import tokens
    from tests.newsletters import samples

    pk, email = delivery
    fbl = f"fbl@{settings.NEWSLETTER_BOUNCE_DOMAIN}"
    raw = samples.load(
        name,
        rcpt=email,
        message_id=tokens.message_id(pk),
        verp=tokens.return_path(pk),
        fbl=fbl,
    )
    to_fbl = b"Feedback-Type:" in raw or name.startswith(("forwarded", "microsoft_jmrp"))
    return (fbl if to_fbl else tokens.return_path(pk)), raw


def mixed_corpus(deliveries: list[tuple[int, str]]) -> tuple[list[tuple[str, bytes]], int]:
    """Each sample in turn, each copy for its own delivery."""
    from tests.newsletters import samples

    names = samples.NAMES
    return [_report(names[i % len(names)], d) for i, d in enumerate(deliveries)], len(names)


def large_corpus(deliveries: list[tuple[int, str]], *, repeat: int) -> list[tuple[str, str, bytes]]:
    import base64
    import random

    out = []
    generator = random.Random(14)  # noqa: S311  (repeatable filler, not a secret)
    for i in range(repeat):
        # A bounce returning the newsletter with a large attachment.
        to, raw = _report("postfix_hard", deliveries[3 * i])
        body = b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding"
        at, end = raw.index(body), raw.index(b"\n--3F2A1C0123.1741686067/mx1.example.net--")
        blob = base64.encodebytes(generator.randbytes(LARGE * 3 // 4))
        attachment = (
            raw[:at]
            + b'Content-Type: multipart/mixed; boundary="att"\n\n--att\n'
            + b"Content-Type: text/plain\n\nThe minutes are attached.\n--att\n"
            + b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
            + blob
            + b"--att--\n"
            + raw[end:]
        )
        out.append(("attachment", to, attachment))
        # A complaint about a message of many small parts (a long thread, a digest).
        to, raw = _report("microsoft_jmrp", deliveries[3 * i + 1])
        at = raw.index(b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding")
        end = raw.index(b"\n--C3A17E52-90B4-4D6E-8F21-6A5D0E9B7C14--")
        part = b"--p\nContent-Type: text/plain\n\nOne line of a long, long thread.\n"
        parts = (
            raw[:at]
            + b'Content-Type: multipart/mixed; boundary="p"\n\n'
            + part * (LARGE // len(part))
            + b"--p--\n"
            + raw[end:]
        )
        out.append(("many_parts", to, parts))
        # An Exim plain-text bounce quoting a large body after its headers.
        to, raw = _report("exim_hard", deliveries[3 * i + 2])
        line = b"the rota for the workshop is up on the board by the door, two a night\n"
        at = raw.index(b"Hello,")
        quoted = raw[:at] + line * (LARGE // len(line)) + raw[at:]
        out.append(("quoted_text", to, quoted))
    return out


def kept_bytes_of_large() -> int:
    """The largest message the database keeps for one of the large messages."""
    from django.db.models.functions import Length

    from newsletters.models import InboundReport

    found = InboundReport.objects.annotate(n=Length("raw")).order_by("-n").first()
    return int(found.n) if found is not None else 0


def check_outcomes() -> None:
    """Every message was taken and acted on: a bench of errors measures nothing."""
    from newsletters.models import InboundReport

    bad = InboundReport.objects.filter(outcome__startswith="error").count()
    if bad:
        log(f"warning: {bad} messages ended in an error")


# The client process ---------------------------------------------------------------------------


def client(tmp: Path, port: int, corpus: list[tuple[str, bytes]], *, connections: int) -> Any:
    """Run the SMTP client in a process of its own (Postfix is one); returns its timings."""
    job = tmp / f"job-{uuid.uuid4().hex[:8]}"
    job.mkdir(parents=True)
    for i, (rcpt, raw) in enumerate(corpus):
        (job / f"{i:06d}").write_bytes(rcpt.encode() + b"\n" + raw)
    (job / "settings.json").write_text(json.dumps({"port": port, "connections": connections}))
    done = subprocess.run(  # noqa: S603  (this script, run again)
        [sys.executable, str(Path(__file__).resolve()), "--client", str(job)],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(job, ignore_errors=True)
    return json.loads(done.stdout)


def client_main(job: Path) -> None:
    options = json.loads((job / "settings.json").read_text())
    messages = []
    for path in sorted(job.glob("[0-9]*")):
        rcpt, _nl, raw = path.read_bytes().partition(b"\n")
        # On the wire lines end in CRLF, as Postfix sends them; converted before the clock runs.
        wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        messages.append((rcpt.decode(), wire))
    each = [0.0] * len(messages)
    failures: list[str] = []
    lock = threading.Lock()
    queue = list(range(len(messages)))

    def work() -> None:
        with smtplib.SMTP("127.0.0.1", options["port"], timeout=300) as smtp:
            smtp.ehlo()
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                rcpt, wire = messages[index]
                code, text = smtp.mail("")
                if code == 250:
                    code, text = smtp.rcpt(rcpt)
                if code != 250:
                    failures.append(f"{rcpt}: {code} {text!r}")
                    smtp.rset()
                    continue
                started = time.perf_counter()
                code, text = smtp.data(wire)
                each[index] = time.perf_counter() - started
                if code != 250:
                    failures.append(f"{rcpt}: {code} {text!r}")

    threads = [threading.Thread(target=work) for _ in range(options["connections"])]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        print(f"[bench] {len(failures)} refused, e.g. {failures[:3]}", file=sys.stderr)
    print(json.dumps({"wall": wall, "each": each, "refused": len(failures)}))


if __name__ == "__main__":
    main()
